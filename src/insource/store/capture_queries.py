"""Queries over captured traffic: finding captures by text.

A capture's messages are content-addressed blobs (one JSON message each), so a search looks inside the blobs
the capture lists, filtered by role: a system prompt shared by every request of a task would otherwise match
every capture. Written for SQLite; `PgStore` translates `LIKE` and placeholders, and `_pg` the JSON functions.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from insource.store.sqlite import Store

PLACES = ("system", "user", "answer", "all")
_ROLES = {"system": ("system", "developer"), "user": ("user",)}

_SEARCH = """
SELECT c.id, c.ts, c.task, c.provider, c.upstream_model, c.status, c.output, c.messages
FROM captures c
WHERE c.task = ? AND ({conditions})
ORDER BY c.ts DESC, c.id
LIMIT ?
"""
_IN_MESSAGES = """EXISTS (
    SELECT 1 FROM json_each(c.messages) j JOIN blobs b ON b.hash = j.value
    WHERE {where} LIKE ? ESCAPE '\\'
)"""
_MESSAGE = "CAST(b.data AS TEXT)"
_ROLE = "json_extract(CAST(b.data AS TEXT), '$.role')"
_CONTENT = "json_extract(CAST(b.data AS TEXT), '$.content')"


# PostgreSQL's jsonb cannot hold U+0000: a message whose text had one (stored as the escape `\u0000`) would make
# the whole search fail, so the escape is dropped before the cast (it can only matter to a search for it).
_PG_JSON = "replace(b.data, '\\u0000', '')::jsonb"


def _pg(sql: str) -> str:
    return (
        sql.replace("json_each(c.messages) j", "jsonb_array_elements_text(c.messages::jsonb) AS j(value)")
        .replace(_ROLE, f"({_PG_JSON} ->> 'role')")
        .replace(_CONTENT, f"({_PG_JSON} ->> 'content')")
    )


def like_pattern(text: str) -> str:
    """`%text%` with LIKE's wildcards and the escape character escaped."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _conditions(places: Collection[str]) -> list[str]:
    if "all" in places:
        return ["c.output LIKE ? ESCAPE '\\'", _IN_MESSAGES.format(where=_MESSAGE)]
    out = []
    roles = [role for place in ("system", "user") if place in places for role in _ROLES[place]]
    if roles:
        quoted = ", ".join(f"'{role}'" for role in roles)  # constants from _ROLES, never user input
        out.append(_IN_MESSAGES.format(where=f"{_ROLE} IN ({quoted}) AND {_CONTENT}"))
    if "answer" in places:
        out.append("c.output LIKE ? ESCAPE '\\'")
    return out


def search_captures(store: Store, task: str, contains: str, places: Collection[str], limit: int) -> list[Any]:
    """Captures of `task` (newest first, at most `limit`) with `contains` in the content of their system
    (or developer) messages, their user messages, their answer, or `all` of a message or the answer. Each row
    keeps `messages`, the capture's list of blob hashes (JSON text)."""
    unknown = set(places) - set(PLACES)
    if unknown or not places:
        raise ValueError(f"places must be some of {PLACES}, got {sorted(places)}")
    conditions = _conditions(places)
    sql = _SEARCH.format(conditions=" OR ".join(conditions))
    pattern = like_pattern(contains)
    params = (task, *([pattern] * len(conditions)), limit)
    return store.query(_pg(sql) if store.dialect == "postgres" else sql, params)


def captured_ids(store: Store, ids: Collection[str]) -> set[str]:
    """Which of these request ids have a capture in the store."""
    found: set[str] = set()
    wanted = list(ids)
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        sql = f"SELECT id FROM captures WHERE id IN ({', '.join('?' * len(chunk))})"
        found.update(str(r["id"]) for r in store.query(sql, chunk))
    return found
