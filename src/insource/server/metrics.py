"""`GET /metrics`: Prometheus text format, rendered at scrape time from counters the gateway keeps anyway."""

from __future__ import annotations

from insource.service.worker_state import WorkerState


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def render(gw: WorkerState) -> bytes:
    lines = [
        "# HELP insource_requests_total Requests metered by this worker.",
        "# TYPE insource_requests_total counter",
    ]
    cost = ["# HELP insource_cost_usd_total Metered cost in USD.", "# TYPE insource_cost_usd_total counter"]
    avoided = [
        "# HELP insource_cost_avoided_usd_total Teacher cost avoided by in-house answers.",
        "# TYPE insource_cost_avoided_usd_total counter",
    ]
    for (tenant, model, served_by, status), (n, c, a) in sorted(gw.counts.items()):
        labels = f'tenant="{_label(tenant)}",model="{_label(model)}",served_by="{_label(served_by)}",status="{status}"'
        lines.append(f"insource_requests_total{{{labels}}} {int(n)}")
        cost.append(f"insource_cost_usd_total{{{labels}}} {c!r}")
        avoided.append(f"insource_cost_avoided_usd_total{{{labels}}} {a!r}")
    failures = gw.router.failures
    tail_students = [
        "# HELP insource_student_failures_total Student errors and timeouts (the teacher answered).",
        "# TYPE insource_student_failures_total counter",
    ]
    tail_students += [f'insource_student_failures_total{{task="{_label(t)}"}} {n}' for t, n in sorted(failures.items())]
    writer = gw.writer.report()
    tail = [
        "# HELP insource_writer_records Records handled by the background writer.",
        "# TYPE insource_writer_records gauge",
    ]
    names = ("queued", "submitted", "written", "spooled", "replayed", "failed", "dropped")
    for name in (*names, "journal_replayed", "journal_lost", "captures_lost"):
        tail.append(f'insource_writer_records{{state="{name}"}} {writer[name]}')
    return ("\n".join(lines + cost + avoided + tail_students + tail) + "\n").encode()
