"""Provider kinds are plugins: config accepts any kind installed under the `insource.providers` entry point group,
and a third-party package adds one exactly as insource's built-ins do (no code change in insource)."""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from tests.conftest import UPSTREAM_KEY, run_cli, start_gateway, stop_gateway

from insource.config import load_config
from insource.errors import ConfigError
from insource.testing import FakeUpstream, ServerHandle

PLUGIN = '''
"""A third-party provider kind: the OpenAI wire format, sent to the URL in $RELAY_PLUGIN_URL."""
import os

from insource.providers.openai import OpenAIProvider


def relay(name, cfg):
    return OpenAIProvider(name, cfg.model_copy(update={"base_url": os.environ["RELAY_PLUGIN_URL"]}))
'''


def _install_plugin(site: Path) -> None:
    """A package on sys.path with its dist-info, exactly what `pip install` leaves behind."""
    (site / "relay_plugin.py").write_text(PLUGIN)
    info = site / "relay_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: relay-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[insource.providers]\nrelay = relay_plugin:relay\n")


def _config(folder: Path, kind: str) -> Path:
    path = folder / "insource.toml"
    path.write_text(
        textwrap.dedent(f"""
        [store]
        url = "sqlite:///{folder}/insource.db"

        [providers.up]
        kind = "{kind}"
        base_url = "http://127.0.0.1:9/v1"
        api_key = "env::LOCAL_UPSTREAM_KEY"
        terms = "self-hosted"

        [models."m"]
        targets = ["up:gpt-4o-mini"]
        price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
        """)
    )
    return path


@pytest.fixture()
def plugin_env(tmp_path: Path, upstream: tuple[FakeUpstream, ServerHandle]) -> Iterator[dict[str, str]]:
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    yield {"PYTHONPATH": path, "RELAY_PLUGIN_URL": upstream[1].url + "/v1", "LOCAL_UPSTREAM_KEY": UPSTREAM_KEY}


def test_a_plugin_kind_serves_requests(tmp_path: Path, plugin_env: dict[str, str]) -> None:
    gw = start_gateway(_config(tmp_path, "relay"), env=plugin_env)
    try:
        created = run_cli("keys", "create", "--tenant", "acme", "--json", "--config", str(gw.config), env=plugin_env)
        key = json.loads(created.stdout)["key"]
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hello"}])
        assert reply.choices[0].message.content  # the config's base_url is dead: only the plugin reaches upstream
    finally:
        stop_gateway(gw)


def test_an_unknown_kind_is_refused_naming_the_installed_ones(tmp_path: Path) -> None:
    path = _config(tmp_path, "nosuchkind")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "nosuchkind" in str(err.value) and "openai" in str(err.value) and "insource.providers" in str(err.value)
    result = run_cli("serve", "--config", str(path), "--port", "1", check=False)
    assert result.returncode != 0 and "nosuchkind" in result.stderr and "Traceback" not in result.stderr


def test_the_demo_teacher_is_not_a_provider_kind(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config(_config(tmp_path, "simulated"))
