"""LoRA adapter → GGUF, for llama.cpp: `convert_lora_to_gguf.py` from the llama.cpp sources.

The `gguf` wheel ships no converters; they are in `vendor/llama.cpp/` of the llama-cpp-python sdist. They are
found in `$INSOURCE_LLAMA_CPP_DIR` (a llama.cpp checkout), else in the user's cache (`$XDG_CACHE_HOME/insource`,
default `~/.cache/insource`), else fetched once with pip (`pip download` of the sdist of the installed
llama-cpp-python version, no build) and unpacked there (only the converters and `gguf-py`, ~2 MB).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from insource.errors import NotReady

log = logging.getLogger(__name__)
CONVERTER = "convert_lora_to_gguf.py"
_KEEP = ("convert_hf_to_gguf.py", CONVERTER, "conversion/", "gguf-py/")
FETCH_TIMEOUT_S = 600
CONVERT_TIMEOUT_S = 600


def _llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None


def _unpack(sdist: Path, dest: Path) -> None:
    """Extract `vendor/llama.cpp/{converters, conversion/, gguf-py/}` of the sdist into `dest`."""
    tmp = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=dest.parent))
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            parts = member.name.split("/vendor/llama.cpp/", 1)
            if len(parts) != 2 or not parts[1].startswith(_KEEP) or not (member.isfile() or member.isdir()):
                continue
            member.name = parts[1]
            tar.extract(member, tmp, filter="data")
    if not (tmp / CONVERTER).is_file():
        raise NotReady(f"{sdist.name} holds no vendor/llama.cpp/{CONVERTER}")
    os.replace(tmp, dest)


def _fetch(dest: Path, version: str) -> None:
    """`pip download` the llama-cpp-python sdist (no build) and unpack its converters into `dest`."""
    with tempfile.TemporaryDirectory(prefix=".sdist-", dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation"]
        cmd += ["-q", "-d", tmp, f"llama-cpp-python=={version}"]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=FETCH_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            raise NotReady(f"could not fetch llama.cpp's converter with pip ({type(exc).__name__})") from None
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise NotReady("pip did not download the llama-cpp-python sdist")
        _unpack(sdists[0], dest)


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "insource"


def converter_dir(cache_root: Path | None = None) -> Path:
    """A folder holding `convert_lora_to_gguf.py` (see the module docstring); NotReady when none can be had."""
    env = os.environ.get("INSOURCE_LLAMA_CPP_DIR")
    if env:
        if not (Path(env) / CONVERTER).is_file():
            raise NotReady(f"INSOURCE_LLAMA_CPP_DIR={env} holds no {CONVERTER}")
        return Path(env)
    version = _llama_cpp_version()
    if version is None:
        raise NotReady("llama-cpp-python is not installed (pip install '.[serving]'): no GGUF converter")
    cache_root = cache_root or user_cache()
    dest = cache_root / f"llama.cpp-{version}"
    if not (dest / CONVERTER).is_file():
        cache_root.mkdir(parents=True, exist_ok=True)
        _fetch(dest, version)
    return dest


def adapter_to_gguf(adapter: Path, base_config: Path, out: Path, cache_root: Path | None = None) -> None:
    """Convert a peft adapter folder to one f16 GGUF file (`llama.cpp --lora`); NotReady on failure."""
    tools = converter_dir(cache_root)
    cmd = [sys.executable, str(tools / CONVERTER), "--base", str(base_config), "--outtype", "f16"]
    cmd += ["--outfile", str(out), str(adapter)]
    env = {**os.environ, "PYTHONPATH": str(tools / "gguf-py"), "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, env=env)
    except (subprocess.TimeoutExpired, OSError) as exc:
        raise NotReady(f"the GGUF conversion of the adapter failed ({type(exc).__name__})") from None
    if done.returncode != 0 or not out.is_file():
        tail = " ".join(done.stderr.strip().splitlines()[-1:])[:300]
        raise NotReady(f"the GGUF conversion of the adapter failed: {tail}")
