"""Dataset builder terms guards: what each provider's terms allow (refusals, the --allow-internal carve-out,
--purpose eval, unknown or undeclared terms) and what distill checks before training on a dataset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests._dataset_helpers import (
    BASE_TS,
    TASK,
    WORDS,
    Corpus,
    _raw,
    _read_jsonl,
    _small_project,
    app,
    build,
    build_corpus,
    cli,
    needs_banking77,
    run,
    runner,
)

from insource.capture.process import process_capture
from insource.errors import NotReady
from insource.store import Store

pytestmark = needs_banking77


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return build_corpus(tmp_path_factory)


def test_allow_internal_carve_out_and_eval(corpus: Corpus, tmp_path: Path) -> None:
    result = build(corpus, tmp_path / "internal", "--allow-internal")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert set(summary["providers"]) == {"local", "openai"}
    assert summary["providers"]["openai"]["count"] > 0
    assert set(summary["refused"]) == {"anthropic"}
    manifest = json.loads((tmp_path / "internal" / "dataset.json").read_text())
    assert manifest["carve_out"]["allow_internal"] is True and manifest["carve_out"]["examples"]["openai"] > 0

    result = build(corpus, tmp_path / "eval", "--purpose", "eval")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["refused"] == {}
    assert set(summary["providers"]) == {"local", "openai", "anthropic"}

    audit = json.loads(cli(corpus, "audit", "--json").stdout)
    builds = [a for a in audit if a["action"] == "dataset.build"]
    assert any(a["purpose"] == "eval" for a in builds)
    assert any(a["detail"]["allow_internal"] and a["detail"]["carve_out"] for a in builds)


def test_everything_refused_names_provider_and_clause(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    result = cli(corpus, "dataset", "build", "--task", "gemini-only", "--out", str(out))
    assert result.exit_code != 0
    assert "google" in result.stderr and "google-gemini" in result.stderr
    assert "compete with the Services" in " ".join(result.stderr.split())
    assert not out.exists() and not list(tmp_path.glob(".refused*"))
    audit = json.loads(cli(corpus, "audit", "--task", "gemini-only", "--json").stdout)
    assert audit[0]["action"] == "dataset.refused" and audit[0]["detail"]["refused"]["google"]["count"] == 6
    result = cli(corpus, "dataset", "build", "--task", "gemini-only", "--out", str(out), "--purpose", "eval")
    assert result.exit_code == 0, result.stderr


def test_unknown_terms_profile_is_strictest_and_missing_store(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text(
        '[store]\nurl = "sqlite:///db/insource.db"\n\n[terms.acme-llm]\ncategory = "any"\nsummary = "ours"\n'
    )
    empty = runner.invoke(app, ["tasks", "--json", "--config", str(config)])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    nostore = runner.invoke(app, ["dataset", "build", "--task", "t", "--out", str(tmp_path / "o"), "--config",
                                  str(config)])  # fmt: skip
    assert nostore.exit_code != 0 and "no store" in nostore.stderr and not (tmp_path / "db").exists()

    store = Store(tmp_path / "db" / "insource.db")
    rows = []
    for i, (provider, terms) in enumerate([("vendor", "mystery-vendor")] * 4 + [("acme", "acme-llm")] * 6):
        raw = _raw(i, BASE_TS + i, f"question about {WORDS[i]} cards", "card_arrival", provider, terms, "S", task="t")
        rows += process_capture(raw)
    store.write_batch(rows)
    store.close()
    out = tmp_path / "new" / "nested" / "ds"
    result = runner.invoke(app, ["dataset", "build", "--task", "t", "--out", str(out), "--json", "--config",
                                 str(config)])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["refused"]["vendor"]["count"] == 4 and summary["refused"]["vendor"]["category"] == "none"
    assert "unknown terms profile 'mystery-vendor'" in " ".join(result.stderr.split())
    assert summary["providers"]["acme"]["count"] == 6 and (out / "dataset.json").exists()


def test_json_is_printed_when_every_example_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "refused"
    result = cli(corpus, "dataset", "build", "--task", "gemini-only", "--out", str(out), "--json")
    assert result.exit_code == 3
    summary = json.loads(result.stdout)  # exactly one JSON object
    assert summary["counts"] == {"train": 0, "val": 0, "test": 0} and summary["providers"] == {}
    assert summary["out"] == str(out) and summary["task"] == "gemini-only"
    assert summary["refused"]["google"]["count"] == 6 and "compete" in summary["refused"]["google"]["clause"]
    assert "refused for --purpose train" in result.stderr and not out.exists()


def test_provider_without_terms_is_not_trainable(tmp_path: Path) -> None:
    from insource.config import load_config

    config = tmp_path / "insource.toml"
    config.write_text('[providers.proxy]\nkind = "openai"\nbase_url = "http://10.0.0.7:8000/v1"\n')
    terms = load_config(config).providers["proxy"].terms
    assert terms == "undeclared"
    raws = [_raw(k, BASE_TS + k, f"q {WORDS[k % 10]} {k}", "card_arrival", "proxy", terms, "S") for k in range(8)]
    config = _small_project(tmp_path, raws)
    result = run(config, "dataset", "build", "--task", TASK, "--out", str(tmp_path / "ds"), "--json")
    assert result.exit_code == 3 and json.loads(result.stdout)["refused"]["proxy"]["category"] == "none"
    assert "declares no `terms`" in " ".join(result.stderr.split())


# -- what distill checks: the terms recorded per example, not just the manifest's purpose --------------------
def _loaded(path: Path) -> Any:
    from insource.capture.dataset_read import load_dataset

    return load_dataset(path)


def test_internal_carve_out_trains_a_classifier_never_a_lora_student(corpus: Corpus, tmp_path: Path) -> None:
    from insource.capture.dataset_read import check_trainable

    out = tmp_path / "internal"
    assert build(corpus, out, "--allow-internal").exit_code == 0
    check_trainable(_loaded(out), TASK, classifier=True)  # the logged carve-out: internal classifier only
    with pytest.raises(NotReady) as err:
        check_trainable(_loaded(out), TASK, classifier=False)
    message = " ".join(str(err.value).split())
    assert "provider 'openai' under terms profile 'openai' [internal]" in message
    assert "generative (LoRA)" in message and "compete with OpenAI" in message
    result = runner.invoke(app, ["distill", "--task", TASK, "--student", "lora", "--dataset", str(out), "--config",
                                 str(corpus.config)])  # fmt: skip
    assert result.exit_code != 0 and "[internal]" in result.stderr and "Traceback" not in result.stderr


def test_hand_edited_manifest_cannot_launder_eval_data(corpus: Corpus, tmp_path: Path) -> None:
    from insource.capture.dataset_read import check_trainable

    out = tmp_path / "eval"
    assert build(corpus, out, "--purpose", "eval").exit_code == 0
    manifest = json.loads((out / "dataset.json").read_text())
    manifest.update(purpose="train", training_allowed=True, refused={}, carve_out={"allow_internal": True})
    manifest["terms"] = {name: {**t, "category": "any"} for name, t in manifest["terms"].items()}
    manifest["terms_categories"] = {"any": sum(manifest["counts"].values())}
    (out / "dataset.json").write_text(json.dumps(manifest))
    for classifier in (True, False):
        with pytest.raises(NotReady) as err:
            check_trainable(_loaded(out), TASK, classifier=classifier)
        message = " ".join(str(err.value).split())
        assert "provider 'anthropic' under terms profile 'anthropic' [none]" in message
        assert "train competing AI models" in message
    # an older dataset without per-example categories: the shipped profile of each example's terms decides
    for name in ("train", "val", "test"):
        path = out / f"{name}.examples.jsonl"
        rows = [{k: v for k, v in r.items() if k != "terms_category"} for r in _read_jsonl(path)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest["terms"] = {}
    (out / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(NotReady, match="'anthropic' \\[none\\]"):
        check_trainable(_loaded(out), TASK, classifier=True)
