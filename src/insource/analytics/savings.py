"""What insourcing has saved: per task (or day), teacher cost avoided minus what the students and the teacher
audits of their answers cost. Pure: store aggregates in, the `savings --json` object out.

net savings = teacher cost avoided − student serving cost − audit cost
share insourced = requests a student answered / caller requests (audits are not caller requests)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from insource.analytics.series import local_date
from insource.store.analytics import BUCKET_S, SavingsRow


def _figures(requests: int, insourced: int, avoided: float, student: float, audit: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "insourced": insourced,
        "share_insourced": round(insourced / requests, 6) if requests else 0.0,
        "teacher_cost_avoided_usd": round(avoided, 6),
        "student_cost_usd": round(student, 6),
        "audit_cost_usd": round(audit, 6),
        "net_savings_usd": round(avoided - student - audit, 6),
    }


def by_day(rows: Iterable[SavingsRow], tz: ZoneInfo) -> list[SavingsRow]:
    """Fold 15-minute buckets into the days of `tz` (group: the ISO date), oldest first."""
    days: dict[str, list[float]] = {}
    for r in rows:
        day = local_date(int(r.group) * BUCKET_S, tz).isoformat()
        acc = days.setdefault(day, [0, 0, 0.0, 0.0, 0.0])
        for i, v in enumerate((r.requests, r.insourced, r.avoided_usd, r.student_usd, r.audit_usd)):
            acc[i] += v
    return [SavingsRow(d, int(a[0]), int(a[1]), a[2], a[3], a[4]) for d, a in sorted(days.items())]


def savings_table(rows: Sequence[SavingsRow], key: str = "task") -> dict[str, Any]:
    """{"rows": [{key, requests, insourced, ...}], "total": {...}}: rows by net savings, largest first (days:
    in date order). The total is computed from the raw sums, not from rounded rows."""
    out = [{key: r.group} | _figures(r.requests, r.insourced, r.avoided_usd, r.student_usd, r.audit_usd) for r in rows]
    if key != "day":
        out.sort(key=lambda row: (-row["net_savings_usd"], str(row[key])))
    total = _figures(
        sum(r.requests for r in rows),
        sum(r.insourced for r in rows),
        sum((r.avoided_usd for r in rows), 0.0),
        sum((r.student_usd for r in rows), 0.0),
        sum((r.audit_usd for r in rows), 0.0),
    )
    return {"rows": out, "total": total}
