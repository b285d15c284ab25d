"""The model registry: entries, versions and the runtime parts a served student is made of.

Below `service/` (which loads students from here) and beside `distill/` (which trains and registers them)
and `evals/` (which scores them). Nothing here imports training code at module level.
"""
