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


def test_lora_needs_a_base_model(tmp_path: Path) -> None:
    ds = chat_dataset(tmp_path / "ds")
    config = tmp_path / "insource.toml"
    config.write_text('[registry]\npath = "models"\n')
    res = runner.invoke(
        app, ["distill", "--task", "gen", "--student", "lora", "--dataset", str(ds), "--config", str(config)]
    )
    assert res.exit_code != 0 and "--base-model" in res.stderr
    assert not (tmp_path / "models").exists() or not [p for p in (tmp_path / "models").iterdir()]
