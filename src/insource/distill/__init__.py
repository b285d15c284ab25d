"""insource.distill."""
