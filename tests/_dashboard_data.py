"""A constructed store for the dashboard's tests: known spend over 60 days, tenants, keys with budgets, a route
with agreements, audits, and a rollback."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from insource.config import load_config
from insource.service.keys import create_key, server_secret
from insource.store import open_store

DAY = 86_400.0
TENANTS = ("acme", "globex", "initech")
MODELS = ("gpt-4o-mini", "gpt-4o")
TASKS = ("support-intent", "headline", None)
ADMIN_KEY = "adm-ui-Secret-4471"


def write_config(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "insource.toml"
    config.write_text(
        '[store]\nurl = "sqlite:///./insource.db"\n[server]\nadmin_key = "env::TEST_UI_ADMIN_KEY"\n'
        "[tenants.acme]\nbudget_usd = 50\n" + extra
    )
    return config


def _usage(ts: float, tenant: str, key_id: str, model: str, task: str | None, cost: float, **kw: Any) -> dict[str, Any]:
    row = {
        "id": "u_" + uuid.uuid4().hex,
        "ts": ts,
        "tenant": tenant,
        "key_id": key_id,
        "endpoint": "chat",
        "model": model,
        "served_by": "openai:" + model,
        "task": task,
        "status": 200,
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "cost_usd": cost,
        "cost_avoided_usd": 0.0,
    }
    row.update(kw)
    return row


def fill(config: Path, now: float | None = None, days: int = 60) -> dict[str, Any]:
    """Fill the store; returns what the tests check against (key ids, the secret keys, totals)."""
    now = time.time() if now is None else now
    cfg = load_config(config)
    store = open_store(cfg)
    secret = server_secret(cfg, store)
    keys = {t: create_key(store, secret, t, budget_usd=100.0 if t == "globex" else None) for t in TENANTS}
    rows, total = [], 0.0
    for d in range(days):
        ts = now - (days - 1 - d) * DAY
        for i, tenant in enumerate(TENANTS):
            for j, model in enumerate(MODELS):
                for k, task in enumerate(TASKS):
                    cost = round(0.01 * (i + 1) * (j + 1) * (k + 1) * (1 + d / days), 6)
                    rows.append(_usage(ts - 60 * (i + j + k), tenant, keys[tenant]["id"], model, task, cost))
                    total += cost
        student = "support-intent@v1"
        rows.append(
            _usage(ts, "acme", keys["acme"]["id"], "gpt-4o-mini", "support-intent", 0.0001, served_by=student)
            | {"cost_avoided_usd": 0.02}
        )
        rows.append(_usage(ts, "acme", keys["acme"]["id"], "gpt-4o-mini", "support-intent", 0.003, endpoint="audit"))
        total += 0.0031
    store.insert_many("usage", rows)
    _routing(store, now, days)
    store.close()
    return {"keys": keys, "total_usd": total, "records": len(rows)}


def _routing(store: Any, now: float, days: int) -> None:
    store.insert_many(
        "routes",
        [
            {
                "task": "support-intent",
                "model": "support-intent@v1",
                "mode": "cascade",
                "percent": 0.0,
                "threshold": 0.9,
                "target_agreement": None,
                "audit_rate": 0.1,
                "floor": 0.9,
                "active": 1,
                "updated_at": now - days * DAY,
            }
        ],
    )
    agreements = []
    for d in range(days):
        for n in range(20):
            agreements.append(
                {
                    "id": "a_" + uuid.uuid4().hex,
                    "ts": now - (days - 1 - d) * DAY,
                    "task": "support-intent",
                    "model": "support-intent@v1",
                    "source": "audit",
                    "agree": int(n < 19),  # 95%: above the floor, never rolled back
                }
            )
    store.insert_many("agreements", agreements)
    events = [
        ("set", now - days * DAY, {"model": "support-intent@v1", "mode": "cascade"}),
        ("rollback", now - 10 * DAY, {"model": "headline@v1", "mode": "cascade", "agreement": 0.71, "floor": 0.9}),
    ]
    store.insert_many(
        "route_events",
        [
            {"id": "e_" + uuid.uuid4().hex, "ts": ts, "task": "support-intent" if kind == "set" else "headline"}
            | {"kind": kind, "detail": orjson.dumps(detail).decode()}
            for kind, ts, detail in events
        ],
    )
