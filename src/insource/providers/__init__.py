"""insource.providers."""
