"""Store growth: CPU per request to write its usage and capture rows into SQLite as the tables grow, with random
record ids (as the gateway made them before) and time-ordered ones (`service/request.py:new_request_id`).

Random ids put each insert into the id indexes (the primary keys of `usage` and `captures`, `usage(request_id)`)
on a random page; once those indexes outgrow SQLite's page cache, every insert reads pages back. Time-ordered ids
append at the right edge.

    python bench/store_growth.py [--sizes 0,100000,300000] [--measure 5000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from insource.service.request import time_ordered_id  # noqa: E402
from insource.store import Store  # noqa: E402

T0 = time.time()
RNG = random.Random(1)


def random_id(i: int) -> str:
    return f"req_{RNG.getrandbits(128):032x}"


def ordered_id(i: int) -> str:  # the gateway's own ids
    return time_ordered_id("req_")


def rows(rid: str, i: int, blob: bool = False) -> list[tuple[str, dict[str, Any], bool]]:
    """One request's usage row and capture row, shaped as the gateway writes them (2,500 requests a second);
    `blob`: and a content-addressed blob of its own (a user message seen once: its sha256 is its key)."""
    ts = T0 + i * 0.0004
    usage = {"id": rid, "request_id": rid, "ts": ts, "tenant": "acme", "key_id": "k1", "endpoint": "chat",
             "model": "gpt-4o-mini", "served_by": "local:gpt-4o-mini", "task": "support-triage", "stream": 0,
             "status": 200, "error_code": None, "prompt_tokens": 40, "cached_tokens": 0, "completion_tokens": 30,
             "reasoning_tokens": 0, "cost_usd": 1e-5, "cost_avoided_usd": 0.0, "latency_ms": 21.3, "ttft_ms": 21.0,
             "attempts": 1}  # fmt: skip
    capture = {"id": rid, "ts": ts, "tenant": "acme", "key_id": "k1", "task": "support-triage", "model": "gpt-4o-mini",
               "provider": "local", "upstream_model": "gpt-4o-mini", "upstream_version": "gpt-4o-mini",
               "served_by": "local:gpt-4o-mini", "terms": "self-hosted", "consent": 1, "messages": '["a","b"]',
               "params": '{"max_tokens":128}', "output_hash": "h", "output": "x" * 200, "finish_reason": "stop",
               "status": 200, "redactors": "[]", "redactions": "{}"}  # fmt: skip
    out: list[tuple[str, dict[str, Any], bool]] = [("usage", usage, False), ("captures", capture, True)]
    if blob:
        data = f'{{"content":"message {rid}","role":"user"}}'
        out.insert(0, ("blobs", {"hash": hashlib.sha256(data.encode()).hexdigest(), "data": data}, True))
    return out


def run(make_id: Callable[[int], str], sizes: list[int], measure: int, blob: bool = False) -> list[float]:
    """µs of CPU per request to write `measure` requests (batches of 1,000 rows) once the tables hold each size."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "growth.db")
        i = 0
        for size in sizes:
            while i < size:
                batch = [r for j in range(i, min(i + 1000, size)) for r in rows(make_id(j), j, blob)]
                store.write_batch(batch)
                i = min(i + 1000, size)
            todo = [r for j in range(i, i + measure) for r in rows(make_id(j), j, blob)]
            i += measure
            started = time.process_time()
            for k in range(0, len(todo), 1000):
                store.write_batch(todo[k : k + 1000])
            out.append(1e6 * (time.process_time() - started) / measure)
        store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0,100000,300000", help="table sizes (requests) to measure at")
    ap.add_argument("--measure", type=int, default=5000, help="requests written and timed at each size")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    randoms, ordered = run(random_id, sizes, args.measure), run(ordered_id, sizes, args.measure)
    blobs = run(ordered_id, sizes, args.measure, blob=True)
    print("| requests already stored | random ids: µs CPU per request | time-ordered ids | ratio | time-ordered ids "
          "+ a new blob per request |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|")
    for size, a, b, c in zip(sizes, randoms, ordered, blobs, strict=True):
        print(f"| {size:,} | {a:.1f} | {b:.1f} | {a / b:.2f}× | {c:.1f} |")


if __name__ == "__main__":
    main()
