"""insource.server."""
