"""The request path's own CPU, in-process: `service/chat.py:chat_completion` from parsed bytes to the usage record
queued, with the upstream call answered in memory (no sockets, no server), for two copies of src/ side by side.

    python bench/request_path_bench.py --base /tmp/main/src --cand src [--n 5000] [--rounds 7]

Each round runs each copy in a fresh subprocess (alternating order) and reports the event-loop thread's CPU per
request; medians over the rounds. It isolates what issue 11 changed (admission, routing, the answer, `finish`)
from the HTTP server and the network, which dominate `gateway_bench.py` and its noise on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import asyncio, gc, sys, tempfile, time
from pathlib import Path
import orjson
from insource.config import parse_config
from insource.providers import UpstreamResponse
from insource.service import chat
from insource.service.keys import KeyInfo
try:
    from insource.service.worker_state import WorkerState as State
    attach = None
except ImportError:  # before issue 11
    from insource.service.gateway import Gateway as State
    from insource.service.insourcing import attach_router as attach

N = int(sys.argv[1])
CAPTURE = sys.argv[2] == "1"
CONFIG = {
    "providers": {"up": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}},
    "models": {"gpt-4o-mini": {"targets": ["up:gpt-4o-mini"]}},
}
ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "card_lost"}, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 42, "completion_tokens": 3, "total_tokens": 45}}
BODY = orjson.dumps(ANSWER)
RAW = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "where is my card?"}],
                    "metadata": {"task": "intent"}})

async def complete(model, body):
    return UpstreamResponse(200, BODY, orjson.loads(BODY))

async def main():
    gw = State(parse_config(CONFIG, Path(tempfile.mkdtemp(prefix="insource-pathbench-"))))
    if attach is not None:
        attach(gw)
    gw.upstreams.providers["up"].complete = complete
    key = KeyInfo("key_bench", "bench", 1000.0, None, None, None, capture=CAPTURE, revoked=False)
    for _ in range(500):
        await chat.chat_completion(gw, key, RAW, None)
    gc.collect()  # as WorkerState.start does in the server
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    start = time.thread_time()
    for _ in range(N):
        await chat.chat_completion(gw, key, RAW, None)
    spent = time.thread_time() - start
    gw.writer.close()
    print(spent / N * 1e6)

asyncio.run(main())
"""


def run(src: Path, n: int, capture: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-c", CHILD, str(n), "1" if capture else "0"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", type=Path, required=True, help="baseline copy of src/")
    p.add_argument("--cand", type=Path, required=True, help="candidate copy of src/")
    p.add_argument("--n", type=int, default=5000, help="requests per run")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--capture", action="store_true", help="the key captures (the capture job is queued too)")
    args = p.parse_args()
    got: dict[str, list[float]] = {"base": [], "cand": []}
    for r in range(args.rounds):
        for name in ("base", "cand") if r % 2 == 0 else ("cand", "base"):
            got[name].append(run(getattr(args, name).resolve(), args.n, args.capture))
            print(f"round {r + 1} {name}: {got[name][-1]:.1f} us", flush=True)
    base, cand = statistics.median(got["base"]), statistics.median(got["cand"])
    print(f"chat_completion CPU per request (event-loop thread), median of {args.rounds} rounds of {args.n}:")
    print(f"base {base:.1f} us, cand {cand:.1f} us, delta {cand - base:+.1f} us ({(cand - base) / base:+.1%})")


if __name__ == "__main__":
    main()
