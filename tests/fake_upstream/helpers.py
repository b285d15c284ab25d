"""Shared helpers for the FakeUpstream tests in this folder: credentials, models, the upstream behind the `server`
fixture (conftest.py), the default chat call and a raw JSON POST."""

from __future__ import annotations

import json
from typing import Any

import httpx

from insource.testing import FakeUpstream

KEY = "sk-test-123"
AZ_KEY = "azure-key-456"
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4o-2024-11-20", "text-embedding-3-small"]
DEPLOYMENTS = {"chat-prod": "gpt-4o-mini", "embed": "text-embedding-3-small"}
API_VERSION = "2024-10-21"
MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there, how are you?"}]


def make_upstream() -> FakeUpstream:
    return FakeUpstream(api_key=KEY, azure_api_key=AZ_KEY, models=MODELS, azure_deployments=DEPLOYMENTS)


def chat(c: Any, **kw: Any) -> Any:
    """chat.completions.create with the default model and messages."""
    return c.chat.completions.create(**{"model": "gpt-4o-mini", "messages": MSGS, **kw})


def raw_post(url: str, path: str, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    hdrs = {"Authorization": f"Bearer {KEY}"} if headers is None else headers
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=data, headers={"content-type": "application/json", **hdrs})
