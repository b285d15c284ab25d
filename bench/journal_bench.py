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
from insource.service.keys import KeyInfo
from insource.service.request import Outcome, RequestFacts
from insource.service.worker_state import WorkerState

CONFIG = {
    "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"gpt-4o-mini": {"targets": ["up:gpt-4o-mini"]}},
}


def finish_us(gw: WorkerState, key: KeyInfo, n: int) -> float:
    """Thread CPU microseconds per `finish` of a successful, metered request."""
    answered = Outcome(200, None, Usage(42, 0, 7, 0), "up:gpt-4o-mini", "up", "gpt-4o-mini", 1)
    requests = [RequestFacts(key, "chat", model="gpt-4o-mini", task="intent") for _ in range(n)]
    start = time.thread_time()
    for facts in requests:
        gw.finish(facts, answered)
    spent = time.thread_time() - start
    gw.writer.flush(60)  # the writer thread's work is not the event loop's: drained between runs
    return spent / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="requests per run")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians reported)")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="insource-journalbench-"))
    gw = WorkerState(parse_config(CONFIG, folder))
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
