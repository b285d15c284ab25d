"""How a supervised llama.cpp server ended is said plainly: an exit code, a signal, or a crash with what to do.

A llama-cpp-python compiled for CPU features the machine (or its VM) does not allow loads fine and then dies with
SIGSEGV or SIGILL on its first answer (seen: Intel AMX tiles inside a VM). The gateway keeps answering from the
teacher either way; the log and the start error must name the crash and the rebuild that fixes it. Driven with
real child processes that end the way such a server does, no llama.cpp needed.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from insource.errors import NotReady
from insource.service.generative import LlamaCppProcess


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
    _, why = _start(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
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
