"""Students: distill a task's captured teacher traffic into an in-house model, and the model registry.

Serving API (light imports; used by the gateway's hot path): `insource.registry.entries` —
`list_models(root)`, `resolve(root, name)`, `load_student(root, name) -> Student`,
`Student.predict(inputs) -> list[Prediction(answer, confidence, ood)]`.
Training: `insource.distill.service.distill(cfg, task, student=..., dataset=...)`.
"""
