"""insource.capture."""
