"""Evaluation of students against their teacher: `insource.evals.run.evaluate`, metrics and charts."""
