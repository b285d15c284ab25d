"""insource.routing."""
