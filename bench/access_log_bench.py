#!/usr/bin/env python
"""What the access log adds to a request's CPU: `WorkerState.finish` (meter, queue the usage record, and with the
log at info write its line) timed on the event-loop thread with the log off and on, text and JSON, alternating.

A noisy shared machine blurs a whole-gateway A/B (``gateway_bench.py --compare-log-level info``): this isolates
the one place the log costs, with the real WorkerState, config, store and formatter, the line written to a file.

Usage::

    python bench/access_log_bench.py            # ~20 s
    python bench/access_log_bench.py --n 20000 --rounds 5
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import statistics
import sys
import tempfile
import time
from pathlib import Path

from insource.config import parse_config
from insource.metering.usage import Usage
from insource.server.logs import log_config
from insource.service.keys import KeyInfo
from insource.service.request import Outcome, RequestFacts
from insource.service.worker_state import WorkerState

CONFIG = {
    "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"gpt-4o-mini": {"targets": ["up:gpt-4o-mini"]}},
}


def finish_us(gw: WorkerState, key: KeyInfo, n: int) -> float:
    """Thread CPU microseconds per `finish` of a successful, metered request."""
    answered = Outcome(
        usage=Usage(42, 0, 7, 0), served_by="up:gpt-4o-mini", provider="up", upstream_model="gpt-4o-mini", attempts=1
    )
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
    folder = Path(tempfile.mkdtemp(prefix="insource-logbench-"))
    gw = WorkerState(parse_config(CONFIG, folder))
    key = KeyInfo("key_bench", "bench", None, None, None, None, capture=False, revoked=False)
    out = folder / "gateway.log"
    results: dict[str, list[float]] = {"off": [], "text": [], "json": []}
    for _ in range(args.rounds):
        for variant in results:
            level, fmt = ("warning", "text") if variant == "off" else ("info", variant)
            logging.config.dictConfig(log_config(level, fmt))
            handler = logging.getLogger("insource").handlers[0]
            assert isinstance(handler, logging.StreamHandler)
            handler.setStream(out.open("a", buffering=1))  # line-buffered, as stderr is (Python >= 3.9)
            gw.access_log = logging.getLogger("insource.access").isEnabledFor(logging.INFO)
            results[variant].append(finish_us(gw, key, args.n))
    gw.writer.close()
    off = statistics.median(results["off"])
    print(f"finish() CPU per request, median of {args.rounds} rounds of {args.n}:")
    for variant, values in results.items():
        med = statistics.median(values)
        print(f"  log {variant:>4}: {med:6.2f} us  (+{med - off:5.2f} us)")
    lines = sum(1 for _ in out.open())
    print(f"{lines} access-log lines written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
