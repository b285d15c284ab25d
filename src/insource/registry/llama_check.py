"""Whether llama.cpp can answer on this machine, asked of a child process, and how a llama.cpp process ended.

`llama-cpp-python` compiles llama.cpp for the machine it is installed on (`-march=native`). A build for CPU
features the machine, or the VM around it, does not allow (seen: Intel AMX tiles inside a VM: a general-protection
fault at `ldtilecfg`) loads a model fine and then dies with SIGSEGV or SIGILL on its first token. In the gateway's
supervised child that only costs answers (the teacher takes them); in process (`insource eval`, the demo) it
would kill the command without a word. So before llama.cpp runs in process, `preflight` has a child process
load the base model and evaluate two tokens (about a second), and a crash there becomes a clear error naming
the rebuild that fixes it. No llama.cpp import here.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

CRASH_SIGNALS = {int(s): s.name for s in (signal.SIGSEGV, signal.SIGILL, signal.SIGBUS)}
BUILD_HINT = (
    "a llama-cpp-python built for another CPU, or with Intel AMX inside a VM that does not allow it, crashes like "
    'this: rebuild it with CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python (docs/lora.md)"
)
SMOKE = (
    "import sys\n"
    "from llama_cpp import Llama\n"
    "llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)\n"
    "llm.eval(llm.tokenize(b'Hello there'))\n"
)
SMOKE_TIMEOUT_S = 120.0


def how_it_ended(code: int | None) -> str:
    """A process's end in words: its exit code, or the signal that ended it (a crash with what to do)."""
    if code is None:
        return "it is not running"
    if code >= 0:
        return f"it exited with code {code}"
    name = CRASH_SIGNALS.get(-code)
    if name is None:
        return f"it was ended by signal {-code}"
    return f"it crashed ({name}); {BUILD_HINT}"


@lru_cache(maxsize=8)
def preflight(base_gguf: Path, code: str = SMOKE) -> str | None:
    """Why llama.cpp cannot answer on this machine (it crashed on `base_gguf`), or None: it answered, it is not
    installed, or it refused the file (an error the in-process load reports better). Once per process and file."""
    if code == SMOKE and importlib.util.find_spec("llama_cpp") is None:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(base_gguf)], capture_output=True, timeout=SMOKE_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return f"llama.cpp did not evaluate two tokens of {base_gguf.name} within {SMOKE_TIMEOUT_S:g}s"
    if done.returncode >= 0:
        return None
    return f"llama.cpp on {base_gguf.name}: {how_it_ended(done.returncode)}"
