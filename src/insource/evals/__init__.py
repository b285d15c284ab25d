"""insource.evals."""
