#!/usr/bin/env python
"""What the usage journal adds to a request's CPU: `Gateway.finish` (meter and queue the usage record, with the
journal on: one `os.write` of the record on an O_APPEND fd) timed on the event-loop thread with the journal on
and off, alternating, the real Gateway, config and store.

Usage::

    python bench/journal_bench.py            # ~20 s
    python bench/journal_bench.py --n 20000 --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from insource.config import parse_config
from insource.metering.usage import Usage
from insource.service.context import RequestContext
from insource.service.gateway import Gateway
from insource.service.keys import KeyInfo

CONFIG = {
    "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"gpt-4o-mini": {"targets": ["up:gpt-4o-mini"]}},
}


def finish_us(gw: Gateway, key: KeyInfo, n: int) -> float:
    """Thread CPU microseconds per `finish` of a successful, metered request."""
    contexts = []
    for _ in range(n):
        ctx = RequestContext(key, "chat", model="gpt-4o-mini", task="intent")
        ctx.provider, ctx.upstream_model, ctx.served_by = "up", "gpt-4o-mini", "up:gpt-4o-mini"
        ctx.usage = Usage(42, 0, 7, 0)
        contexts.append(ctx)
    start = time.thread_time()
    for ctx in contexts:
        gw.finish(ctx)
    spent = time.thread_time() - start
    gw.writer.flush(60)  # the writer thread's work is not the event loop's: drained between runs
    return spent / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="requests per run")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="insource-journalbench-"))
    gw = Gateway(parse_config(CONFIG, folder))
    gw.access_log = False
    key = KeyInfo("key_bench", "bench", None, None, None, None, capture=False, revoked=False)
    journal = gw.writer.journal
    results: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(args.rounds):
        for variant in results:
            gw.writer.journal = journal if variant == "on" else None
            results[variant].append(finish_us(gw, key, args.n))
    gw.writer.journal = journal
    gw.writer.close()
    off = statistics.median(results["off"])
    print(f"finish() CPU per request, median of {args.rounds} rounds of {args.n}:")
    for variant, values in results.items():
        med = statistics.median(values)
        print(f"  journal {variant:>3}: {med:6.2f} us  (+{med - off:5.2f} us)")


if __name__ == "__main__":
    main()
