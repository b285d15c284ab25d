"""Paths, CPU assignment, targets and the request body shared by the gateway benchmark's modules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent  # bench/
REPO = HERE.parent
ENTRY = HERE / "gateway_bench.py"  # the entry point; also runs the probe client (``--_probe SPEC``)
UPSTREAM = HERE / "_upstream.py"
RESULTS = HERE / "results" / "gateway.md"
GATEWAY_CPU = 0
CLIENT_CPU = 1
PATH = "/v1/chat/completions"

CPU_TARGET_MS = 0.35
STREAM_DELTA_TARGET_MS = 1.0


def chat_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful support assistant for an online shop. Be brief."},
            {
                "role": "user",
                "content": "Hello! I ordered a blue jacket last week (order 48213) and it arrived "
                "in the wrong size. Can I get a refund or an exchange?",
            },
        ],
        "max_tokens": 128,
        "temperature": 0.2,
        "metadata": {"task": "support-triage"},
    }
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()
