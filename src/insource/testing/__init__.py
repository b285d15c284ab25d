"""insource.testing."""
