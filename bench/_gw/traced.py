"""Bench-only instrumentation of a gateway process (never imported by the product).

``install()`` runs before the gateway's CLI in the same process (``--trace DIR``): it starts `tracemalloc`
(``INSOURCE_BENCH_TRACE_FRAMES`` frames, default 8), times every GC pass with `gc.callbacks`, and on SIGUSR1
writes ``DIR/snap-N.pickle`` (a tracemalloc snapshot) and ``DIR/gc-N.json`` (counts, collections, the pauses
per generation since the last dump, thread count), so the soak can diff snapshots over time.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
_started: list[float] = [0.0]


def _on_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses[info["generation"]].append(time.perf_counter() - _started[0])


def _tasks() -> int:
    import asyncio

    try:
        return len(asyncio.all_tasks(asyncio.get_running_loop()))  # the signal handler runs on the loop's thread
    except RuntimeError:
        return -1


def _dump(directory: Path, n: list[int]) -> None:
    n[0] += 1
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(str(directory / f"snap-{n[0]}.pickle"))
    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
    pauses = {g: sorted(v) for g, v in _pauses.items()}
    stats = {
        "count": gc.get_count(),
        "threshold": gc.get_threshold(),
        "stats": gc.get_stats(),
        "objects": sum(types.values()),
        "types": dict(types.most_common(200)),
        "blocks": sys.getallocatedblocks(),
        "threads": threading.active_count(),
        "pauses": {
            g: {"n": len(v), "total_ms": sum(v) * 1000, "max_ms": (v[-1] * 1000 if v else 0.0)}
            for g, v in pauses.items()
        },
        "traced_mb": tracemalloc.get_traced_memory()[0] / 2**20,
        "tasks": _tasks(),
    }
    for v in _pauses.values():
        v.clear()
    (directory / f"gc-{n[0]}.json").write_text(json.dumps(stats))


def install() -> None:
    directory = Path(os.environ["INSOURCE_BENCH_TRACE"])
    directory.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get("INSOURCE_BENCH_TRACE_FRAMES", "0"))  # 0: object counts only (cheap)
    if frames:
        tracemalloc.start(frames)
    gc.callbacks.append(_on_gc)
    n = [0]
    signal.signal(signal.SIGUSR1, lambda *_: _dump(directory, n))


def report(directory: Path, top: int = 25) -> str:
    """The growth between the first and the last snapshot by allocation line, and GC pauses per window."""
    lines = _type_growth(directory, top)
    snaps = sorted(directory.glob("snap-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
    if len(snaps) < 2:
        return "\n".join(lines)
    first, last = tracemalloc.Snapshot.load(str(snaps[0])), tracemalloc.Snapshot.load(str(snaps[-1]))
    skip = tracemalloc.Filter(False, tracemalloc.__file__)
    diff = last.filter_traces([skip]).compare_to(first.filter_traces([skip]), "traceback")
    lines.append(f"tracemalloc growth {snaps[0].name} -> {snaps[-1].name} (top {top}):")
    for stat in diff[:top]:
        lines.append(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d} blocks")
        lines += [f"      {ln}" for ln in stat.traceback.format(limit=6)]
    return "\n".join(lines)


def _type_growth(directory: Path, top: int) -> list[str]:
    dumps = [
        json.loads(p.read_text()) for p in sorted(directory.glob("gc-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    ]
    lines = [
        f"dump {i + 1}: blocks {g['blocks']}, gc objects {g['objects']}, tasks {g['tasks']}, threads {g['threads']}, "
        f"pauses {g['pauses']}"
        for i, g in enumerate(dumps)
    ]
    if len(dumps) >= 2:
        first, last = dumps[0]["types"], dumps[-1]["types"]
        growth = sorted(((last.get(k, 0) - first.get(k, 0), k) for k in set(first) | set(last)), reverse=True)
        lines.append("gc-tracked objects by type, growth first -> last dump:")
        lines += [f"  {d:+9d} {k}" for d, k in growth[:top]]
    return lines


if __name__ == "__main__":
    import sys

    print(report(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
