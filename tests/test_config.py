"""Strict config: the README's minimal file works as written; unknown keys and inline secrets are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import run_cli

from insource.config import load_config
from insource.errors import ConfigError
from insource.metering.prices import resolve_prices

README_CONFIG = """[store]
url = "sqlite:///./insource.db"

[providers.local]
kind = "openai"                       # any OpenAI-compatible server; "azure" for Azure OpenAI
base_url = "http://127.0.0.1:9000/v1"
api_key = "env::LOCAL_UPSTREAM_KEY"   # a reference, never the secret itself
terms = "self-hosted"                 # which terms govern this provider's outputs (see capture)

[models."gpt-4o-mini"]
targets = ["local:gpt-4o-mini"]       # provider:upstream-model, in fallback order
price = { input_per_mtok = 0.15, output_per_mtok = 0.60 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "insource.toml"
    path.write_text(text)
    return path


def test_readme_config_works_and_paths_are_relative_to_it(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, README_CONFIG))
    assert cfg.sqlite_path() == tmp_path / "insource.db"
    assert cfg.registry_path() == tmp_path / "models"
    assert resolve_prices(cfg)["gpt-4o-mini"].output_per_mtok == 0.60
    # any command creates and migrates the store, from any folder
    out = run_cli(
        "keys", "create", "--tenant", "t", "--json", "--config", str(tmp_path / "insource.toml"), cwd=Path("/")
    )
    assert set(json.loads(out.stdout)) == {"id", "key", "tenant"}
    assert (tmp_path / "insource.db").exists()


@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ("[store]\nurl = 'sqlite:///x.db'\nurll = 1\n", "store.urll"),
        ("[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\ncolour = 'red'\n", "providers.a.colour"),
        (
            "[models.m]\ntargets = ['a:b']\nprice = { input_per_mtok = 1, outptu = 2 }\n"
            "[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\n",
            "models.m.price.outptu",
        ),
        ("[nonsense]\nx = 1\n", "nonsense"),
    ],
)
def test_unknown_keys_name_their_path(tmp_path: Path, snippet: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, snippet))
    assert f"'{path}'" in err.value.message


@pytest.mark.parametrize(
    ("snippet", "path"),
    [
        ("[server]\nmax_body_mb = 0\n", "server.max_body_mb"),
        ("[server]\nmax_body_mb = nan\n", "server.max_body_mb"),
        ("[providers.local]\nttft_timeout_s = -1\n", "providers.local.ttft_timeout_s"),
        ("[providers.local]\ntotal_timeout_s = 0\n", "providers.local.total_timeout_s"),
        ("[models.\"gpt-4o-mini\"]\ntargets = ['local:x']\nprice = { input_per_mtok = inf }\n", "price"),
    ],
)
def test_values_that_would_break_every_request_are_refused(tmp_path: Path, snippet: str, path: str) -> None:
    base = README_CONFIG.replace("[providers.local]\n", "[providers.local]\n" + snippet.split("\n", 1)[1], 1)
    text = base if snippet.startswith("[providers.local]") else README_CONFIG + snippet
    if snippet.startswith("[models."):
        text = README_CONFIG.split("[models.")[0] + snippet
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert path in err.value.message


def test_inline_secret_refused_without_echoing_it(tmp_path: Path) -> None:
    text = "[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\napi_key = 'sk-live-abcdef123456'\n"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert "env::" in err.value.message and "sk-live-abcdef123456" not in err.value.message


def test_unknown_provider_in_targets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown provider 'ghost'"):
        load_config(write(tmp_path, "[models.m]\ntargets = ['ghost:x']\n"))


def test_unpriced_model_refuses_to_start_unless_free(tmp_path: Path) -> None:
    base = "[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\n[models.custom]\ntargets = ['a:my-model']\n"
    path = write(tmp_path, base)
    with pytest.raises(ConfigError, match="no price"):
        resolve_prices(load_config(path))
    result = run_cli("serve", "--config", str(path), "--port", "1", check=False)
    assert result.returncode != 0 and "no price" in result.stderr and "Traceback" not in result.stderr
    assert resolve_prices(load_config(write(tmp_path, base + "free = true\n")))["custom"].input_per_mtok == 0
    # a model the shipped price table knows needs no price
    table = "[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\n[models.fast]\ntargets = ['a:gpt-4o-mini']\n"
    assert resolve_prices(load_config(write(tmp_path, table)))["fast"].source.startswith("table:")


def test_embedded_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None)
    assert cfg.models == {} and cfg.sqlite_path() == tmp_path / "insource.db"


def test_corrupt_config_is_a_clear_cli_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[store\nurl=")
    result = run_cli("spend", "--config", str(path), check=False)
    assert result.returncode != 0 and "not valid TOML" in result.stderr and "Traceback" not in result.stderr
    missing = run_cli("spend", "--config", str(tmp_path / "nope.toml"), check=False)
    assert missing.returncode != 0 and "cannot read config" in missing.stderr
