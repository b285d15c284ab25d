"""Feedback and Batch API queries on PostgreSQL: the migrations and `store/feedback_queries.py`,
`store/batch_queries.py` run unchanged through `PgStore`."""

from __future__ import annotations

import orjson
from tests.test_postgres import pg_url, pytestmark  # noqa: F401  (the server fixture and its skip condition)

from insource.store import batch_queries, feedback_queries
from insource.store.postgres import PgStore


def _usage(rid: str, request_id: str, tenant: str, ts: float) -> dict[str, object]:
    return {
        "id": rid, "request_id": request_id, "ts": ts, "tenant": tenant, "key_id": "k", "endpoint": "chat",
        "model": "m", "served_by": "p:m", "task": "pg-fb", "stream": 0, "status": 200, "error_code": None,
        "prompt_tokens": 1, "cached_tokens": 0, "completion_tokens": 1, "reasoning_tokens": 0, "cost_usd": 0.001,
        "cost_avoided_usd": 0.0, "latency_ms": 1.0, "ttft_ms": None, "attempts": 1,
    }  # fmt: skip


def test_feedback_queries_on_postgres(pg_url: str) -> None:  # noqa: F811
    store = PgStore(pg_url)
    store.write_batch(
        [("usage", _usage("u1", "req-pg", "acme", 1.0), True), ("usage", _usage("u2", "req-pg", "acme", 2.0), True)]
    )
    assert feedback_queries.find_request(store, "other", "req-pg") is None
    found = feedback_queries.find_request(store, "acme", "req-pg")
    assert found == {"id": "u2", "task": "pg-fb"}  # the most recent request with the id
    row = {
        "id": "fb1", "ts": 3.0, "tenant": "acme", "key_id": "k", "request_id": "req-pg", "usage_id": "u2",
        "task": "pg-fb", "score": -0.5, "label": None, "correction": "fixed", "comment": None, "redactions": "{}",
    }  # fmt: skip
    feedback_queries.insert_feedback(store, row)
    listed = feedback_queries.list_feedback(store, "pg-fb")
    assert [(r["id"], r["score"], r["correction"]) for r in listed] == [("fb1", -0.5, "fixed")]
    assert list(feedback_queries.feedback_for_task(store, "pg-fb")) == ["u2"]


def test_batch_queries_on_postgres(pg_url: str) -> None:  # noqa: F811
    store = PgStore(pg_url)
    file = dict.fromkeys(batch_queries.FILE_COLUMNS)
    file.update(id="file-pg", tenant="acme", key_id="k", provider="p", purpose="batch", object="{}", created_at=1.0)
    batch_queries.insert_file(store, file)
    batch_queries.insert_file(store, file, ignore=True)
    assert batch_queries.get_file(store, "other", "file-pg") is None
    assert [r["id"] for r in batch_queries.list_files(store, "acme", "batch", 10)] == ["file-pg"]
    batch = {c: "x" for c in batch_queries.BATCH_COLUMNS}
    batch.update(id="batch_pg", tenant="acme", object=orjson.dumps({"id": "batch_pg"}).decode(), created_at=1.0)
    batch_queries.insert_batch(store, batch)
    batch_queries.update_batch(store, "batch_pg", "completed", "{}")
    batch_queries.mark_metered(store, "batch_pg", 5.0, 3)
    batch_queries.mark_metered(store, "batch_pg", 6.0, 9)
    got = batch_queries.get_batch(store, "acme", "batch_pg")
    assert got is not None and (got["status"], got["metered_at"], got["records"]) == ("completed", 5.0, 3)
