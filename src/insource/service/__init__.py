"""insource.service."""
