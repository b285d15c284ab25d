"""What insourcing has saved: per task (or day), teacher cost avoided minus what the students and the teacher
audits of their answers cost. Pure: daily rollup rows in, the `savings --json` object out.

net savings = teacher cost avoided − student serving cost − audit cost
share insourced = requests a student answered / callers' requests (audits are not callers' requests; requests
insource refused itself (rate limit, budget) are left out)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from insource.store.usage_queries import STUDENT_PROVIDER, UsageRow

AUDIT = "audit"
CACHE = "cache"  # served_by of answers from the response cache: a source of savings of its own


def is_student(served_by: str | None, endpoint: str | None) -> bool:
    """A student's answer: served by a registry name (`TASK@vN`), not by a teacher (`PROVIDER:MODEL`), not by
    nobody ("insource": refused, or every upstream failed), and not an audit."""
    return (
        bool(served_by)
        and ":" not in str(served_by)
        and served_by not in (STUDENT_PROVIDER, CACHE)
        and endpoint != AUDIT
    )


@dataclass(slots=True)
class Savings:
    group: str
    requests: int = 0
    insourced: int = 0
    avoided_usd: float = 0.0
    student_usd: float = 0.0
    audit_usd: float = 0.0

    def add(self, row: UsageRow) -> None:
        """Fold in one rollup row that has `served_by` and `endpoint` among its keys."""
        served_by, endpoint = row.keys.get("served_by"), row.keys.get("endpoint")
        answered = row.requests - row.refused
        self.requests += answered
        self.avoided_usd += row.cost_avoided_usd
        if endpoint == AUDIT:
            self.audit_usd += row.cost_usd
        elif is_student(served_by, endpoint):
            self.insourced += answered
            self.student_usd += row.cost_usd

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "insourced": self.insourced,
            "share_insourced": round(self.insourced / self.requests, 6) if self.requests else 0.0,
            "teacher_cost_avoided_usd": round(self.avoided_usd, 6),
            "student_cost_usd": round(self.student_usd, 6),
            "audit_cost_usd": round(self.audit_usd, 6),
            "net_savings_usd": round(self.avoided_usd - self.student_usd - self.audit_usd, 6),
        }


def source_of(served_by: str | None, endpoint: str | None) -> str:
    """Where an answer's savings come from: "student", "cache" (the response cache), or neither ("teacher"; an
    "audit" costs)."""
    if endpoint == AUDIT:
        return AUDIT
    if served_by == CACHE:
        return CACHE
    return "student" if is_student(served_by, endpoint) else "teacher"


def fold_sources(rows: Iterable[UsageRow]) -> list[Savings]:
    """Group rollup rows (keys: "served_by", "endpoint") by source; untagged traffic counts too (the response
    cache needs no task)."""
    groups: dict[str, Savings] = {}
    for row in rows:
        source = source_of(row.keys.get("served_by"), row.keys.get("endpoint"))
        acc = groups.get(source)
        if acc is None:
            acc = groups[source] = Savings(source)
        acc.add(row)
    return list(groups.values())


def fold(rows: Iterable[UsageRow], key: str) -> list[Savings]:
    """Group rollup rows (keys: `key`, "task", "served_by", "endpoint") by `key`; rows without a task are left
    out: untagged traffic cannot be insourced."""
    groups: dict[str, Savings] = {}
    for row in rows:
        if row.keys.get("task") is None:
            continue
        group = str(row.keys[key])
        acc = groups.get(group)
        if acc is None:
            acc = groups[group] = Savings(group)
        acc.add(row)
    return list(groups.values())


def savings_table(groups: Sequence[Savings], key: str = "task") -> dict[str, Any]:
    """{"rows": [{key, requests, insourced, ...}], "total": {...}}: tasks by net savings, largest first; days in
    date order. The total is summed from the raw figures, not from rounded rows."""
    out = [{key: g.group} | g.figures() for g in groups]
    if key == "day":
        out.sort(key=lambda row: str(row[key]))
    else:
        out.sort(key=lambda row: (-row["net_savings_usd"], str(row[key])))
    total = Savings("total")
    for g in groups:
        total.requests += g.requests
        total.insourced += g.insourced
        total.avoided_usd += g.avoided_usd
        total.student_usd += g.student_usd
        total.audit_usd += g.audit_usd
    return {"rows": out, "total": total.figures()}
