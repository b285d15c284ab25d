"""Shared plumbing of the cascade benchmarks: a gateway config pointing at a replay teacher, the CLI called as a
subprocess (`--json`), traffic replayed through the gateway with the official `openai` SDK, and spend by who
answered. Used by `banking77_cascade.py` and `snips_extraction.py`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai


def cli(config: Path, *args: str, ok: tuple[int, ...] = (0,)) -> Any:
    """`insource ARGS --config CONFIG --json` in a subprocess; its one JSON value (exit codes in `ok` accepted:
    `eval` exits 3 with its result when no threshold reaches the target)."""
    proc = subprocess.run([sys.executable, "-m", "insource", *args, "--config", str(config), "--json"],
                          stdout=subprocess.PIPE, check=False)  # fmt: skip
    if proc.returncode not in ok:
        raise subprocess.CalledProcessError(proc.returncode, args, proc.stdout)
    return json.loads(proc.stdout)


def write_config(folder: Path, teacher_url: str, extra: str = "") -> Path:
    """insource.toml: SQLite store in `folder`, `gpt-4o-mini` routed to the replay teacher at `teacher_url`."""
    config = folder / "insource.toml"
    config.write_text(
        f'[store]\nurl = "sqlite:///./insource.db"\n[providers.teacher]\nkind = "openai"\n'
        f'base_url = "{teacher_url}/v1"\nterms = "self-hosted"\n'
        f'[models."gpt-4o-mini"]\ntargets = ["teacher:gpt-4o-mini"]\n{extra}'
    )
    return config


async def replay(
    base_url: str, key: str, task: str, system: str, pairs: list[tuple[str, str]], concurrency: int = 32
) -> list[dict[str, Any]]:
    """Send each (user text, gold answer) as a chat request of `task`; the answer, who served it, client ms."""
    limit = asyncio.Semaphore(concurrency)
    out: list[dict[str, Any]] = []
    async with openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=3, timeout=300) as client:

        async def one(text: str, gold: str) -> None:
            async with limit:
                t0 = time.perf_counter()
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    metadata={"task": task},
                    messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
                )
                ms = (time.perf_counter() - t0) * 1000
                answer = raw.parse().choices[0].message.content or ""
                served = raw.headers["x-insource-served-by"]
                out.append({"text": text, "gold": gold, "answer": answer.strip(), "served_by": served, "ms": ms})

        await asyncio.gather(*(one(t, g) for t, g in pairs))
    return out


def spend_by_served(config: Path) -> dict[str, dict[str, float]]:
    """`insource spend --by served_by`: requests, cost and cost avoided for each model that answered."""
    rows = cli(config, "spend", "--by", "served_by")
    items = rows.get("rows", rows) if isinstance(rows, dict) else rows
    out: dict[str, dict[str, float]] = {}
    for row in items:
        name = str(row.get("served_by") or row.get("group") or row.get("key"))
        out[name] = {k: float(row.get(k) or 0.0) for k in ("requests", "cost_usd", "cost_avoided_usd")}
    return out
