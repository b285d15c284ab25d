"""Fixtures of the FakeUpstream tests: one upstream per module on 127.0.0.1, reset before each test."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from tests.fake_upstream.helpers import KEY, make_upstream

from insource.testing import FakeUpstream, run_server


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[FakeUpstream, str]]:
    up = make_upstream()
    with run_server(up) as handle:
        yield up, handle.url


@pytest.fixture
def up(server: tuple[FakeUpstream, str]) -> FakeUpstream:
    server[0].reset()
    return server[0]


@pytest.fixture
def url(server: tuple[FakeUpstream, str], up: FakeUpstream) -> str:
    return server[1]


@pytest.fixture
def client(url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0) as c:
        yield c
