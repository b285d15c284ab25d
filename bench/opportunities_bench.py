"""Opportunity finder over N captured requests (default 1,000,000): fills a fresh SQLite store with synthetic
captures of a few templates (label-like and long-form, with and without a system prompt) the way the capture
writer stores them (content-addressed message blobs, usage rows), then times `find_opportunities` and reports
its peak memory. Target (issue 12): <= 60 s for 1M captured requests on 2 cores.

    python bench/opportunities_bench.py [--captures N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

from insource.analytics.opportunities import find_opportunities
from insource.capture.process import canonical, sha256_hex
from insource.store import Store

WORDS = ["card", "account", "transfer", "balance", "fee", "refund", "pending", "charged", "twice", "blocked"]
SYSTEMS = [
    "Classify the banking customer's message into one intent. Answer with the intent only.",
    "You are a support router. Reply with the team that should handle the ticket: billing, tech or sales.",
    "Extract the city and date from the user's travel request as JSON.",
]
LABELS = [f"intent_{i}" for i in range(60)]


def prompt(rng: random.Random, kind: int) -> tuple[list[dict[str, str]], str]:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 25)))
    if kind < 3:
        pick = zlib.crc32(text.encode())  # the teacher answers the same text the same way
        answer = LABELS[pick % len(LABELS)] if kind != 2 else f'{{"city": "Paris", "date": "2026-12-0{pick % 9 + 1}"}}'
        return [{"role": "system", "content": SYSTEMS[kind]}, {"role": "user", "content": text}], answer
    if kind == 3:
        return [{"role": "user", "content": f"Q: {text}\nA:"}], ["up", "down", "none", "neutral"][
            zlib.crc32(text.encode()) % 4
        ]
    return [{"role": "user", "content": text + "?"}], ("Step 1: " + text + ". ") * rng.randint(3, 12)


def fill(store: Store, n: int, batch: int = 5000) -> None:
    rng = random.Random(0)
    t0 = time.time() - 20 * 86400
    written = 0
    while written < n:
        rows: list[tuple[str, dict[str, Any], bool]] = []
        for i in range(written, min(n, written + batch)):
            messages, answer = prompt(rng, rng.choices(range(5), weights=[4, 2, 1, 2, 1])[0])
            hashes = []
            for m in messages:
                data = canonical(m)
                digest = sha256_hex(data)
                hashes.append(digest)
                rows.append(("blobs", {"hash": digest, "data": data.decode()}, True))
            cid, ts = uuid.uuid4().hex, t0 + i * (20 * 86400 / n)
            rows.append(("usage", _usage(cid, ts, len(answer)), False))
            rows.append(("captures", _capture(cid, ts, hashes, answer), False))
        store.write_batch(rows)
        written = min(n, written + batch)


def _usage(cid: str, ts: float, answer_chars: int) -> dict[str, Any]:
    completion = max(1, answer_chars // 4)
    return {
        "id": cid, "ts": ts, "tenant": "app", "key_id": "k", "endpoint": "chat", "model": "gpt-4o-mini",
        "served_by": "openai:gpt-4o-mini", "status": 200, "prompt_tokens": 40, "completion_tokens": completion,
        "cost_usd": (40 * 0.15 + completion * 0.6) / 1e6,
    }  # fmt: skip


def _capture(cid: str, ts: float, hashes: list[str], answer: str) -> dict[str, Any]:
    import orjson

    return {
        "id": cid, "ts": ts, "tenant": "app", "key_id": "k", "task": None, "model": "gpt-4o-mini",
        "provider": "openai", "upstream_model": "gpt-4o-mini", "upstream_version": "gpt-4o-mini",
        "served_by": "openai:gpt-4o-mini", "terms": "openai", "consent": 1, "messages": orjson.dumps(hashes).decode(),
        "params": '{"model":"gpt-4o-mini"}', "output_hash": None, "output": answer, "finish_reason": "stop",
        "status": 200, "redactors": "[]", "redactions": "{}",
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, help="reuse/keep the store in this folder")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="opps-bench-"))
    path = folder / "insource.db"
    fresh = not path.exists()
    store = Store(path)
    try:
        if fresh:
            t = time.perf_counter()
            fill(store, args.captures)
            print(f"filled {args.captures:,} captures in {time.perf_counter() - t:.1f} s")
        t, cpu = time.perf_counter(), time.process_time()
        rows = find_opportunities(store)
        elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"opportunities over {args.captures:,} captures: {elapsed:.1f} s wall, {cpu:.1f} s CPU, peak {peak:.0f} MB"
        )
        for r in rows:
            print(f"  {r['score']:>10.4f}  {r['kind']:<14} {r['requests']:>8}  {r['template'][:70]!r}")
    finally:
        store.close()
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
