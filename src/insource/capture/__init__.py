"""insource.capture: what the gateway captures and how it becomes datasets.

- `record.CaptureRaw`: the raw facts of one request (built on the hot path by the gateway).
- `process.process_capture(raw)`: redaction + content-addressed rows, run in the writer thread.
- `redact`: pluggable redactors; `terms`: terms profiles (shipped in terms.toml, overridable in config).
- `slots`: template inference (`infer_template`, `Template.extract`); `dataset`: the dataset builder.
- `assigned`: templates assigned to a task (`insource tasks assign`), matched on the gateway's hot path.

Kept import-light on purpose: the gateway imports this package.
"""
