"""insource.analytics."""
