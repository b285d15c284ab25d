"""Generative (LoRA) students served by llama.cpp: a server process per student that the gateway supervises,
and the client that asks it for an answer and its confidence over the OpenAI wire.

`LlamaCppProcess` runs `python -m llama_cpp.server` with the student's base GGUF and `--lora_path
adapter.gguf` (`logits_all` for token log-probs) on a free 127.0.0.1 port, waits until it answers, and is
started again when it has died (at most once every `RESTART_BACKOFF_S`). `GenerativeStudent.complete` sends the
request (the pruned system prompt removed, greedy, `logprobs`), and returns the answer with its confidence:
exp(minimum token log-prob), 0 when it stopped on length or, for a `json` task, does not parse. Any failure
raises: the router counts it and the teacher answers. No ML import here: llama.cpp runs in the child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from insource.config import ProviderConfig
from insource.errors import InsourceError, NotReady
from insource.metering.usage import Usage
from insource.registry.entries import read_json, read_model_info, resolve
from insource.routing.agreement import parses
from insource.routing.tokens import completion_tokens, prompt_tokens
from insource.service.answerers import ReplyIds, StudentReply, completion_body, completion_events

START_TIMEOUT_S = 120.0
RESTART_BACKOFF_S = 5.0
ANSWER_TIMEOUT_S = 60.0
DEFAULT_MAX_TOKENS = 256
N_CTX = 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _quit_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the gateway worker that started it dies, even by SIGKILL."""
    import ctypes

    with contextlib.suppress(OSError):  # not glibc Linux: the worker's clean stop still stops it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LlamaCppProcess:
    """One supervised `llama_cpp.server` serving a base GGUF with one LoRA adapter."""

    def __init__(self, name: str, base_gguf: Path, adapter: Path, log_dir: Path, threads: int = 1) -> None:
        self.name, self.base_gguf, self.adapter, self.log_dir, self.threads = name, base_gguf, adapter, log_dir, threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.starts = 0
        self._last_start = 0.0

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "insource.registry.llama_server", "--model", str(self.base_gguf),
            "--lora_path", str(self.adapter), "--host", "127.0.0.1", "--port", str(self.port),
            "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads), "--n_ctx", str(N_CTX),
            "--model_alias", self.name, "--logits_all", "false",
        ]  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers; NotReady when it cannot."""
        if time.monotonic() - self._last_start < RESTART_BACKOFF_S and self.starts:
            raise NotReady(f"the llama.cpp server of {self.name} died and restarts in a moment")
        self.stop()
        self._last_start = time.monotonic()
        self.port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"llama-{self.name}.log").open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_quit_with_parent,
            )
        self.starts += 1
        self._wait_ready()

    def _wait_ready(self) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.alive():
                raise NotReady(f"the llama.cpp server of {self.name} exited at start (see its log in {self.log_dir})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise NotReady(f"the llama.cpp server of {self.name} did not start within {START_TIMEOUT_S:g}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def serving_files(folder: Path, info: dict[str, Any]) -> tuple[Path, Path]:
    """(base GGUF, adapter GGUF) of a LoRA student; NotReady naming what is missing."""
    runtime = info.get("runtime") or {}
    base = runtime.get("base_gguf")
    if not base or not Path(base).is_file():
        raise NotReady(f"{folder.name} has no GGUF base model to serve on llama.cpp ({base or 'none recorded'})")
    adapter = folder / "adapter.gguf"
    if not adapter.is_file():
        why = runtime.get("gguf_error") or "adapter.gguf is missing"
        raise NotReady(f"{folder.name} cannot be served by llama.cpp: {why}")
    return Path(base), adapter


def eval_metric(folder: Path) -> str:
    """The metric `insource eval` judged the student with (audits and shadow runs use it), default exact."""
    path = folder / "eval.json"
    if not path.is_file():
        return "exact"
    latest = read_json(path).get("latest")
    metric = latest.get("metric") if isinstance(latest, dict) else None
    return str(metric) if metric in ("json", "exact", "similarity") else "exact"


class GenerativeStudent:
    """A LoRA student answering through its supervised llama.cpp server."""

    def __init__(self, registry: Path, name: str, log_dir: Path, external_url: str | None = None) -> None:
        folder = resolve(registry, name)
        info = read_model_info(folder)
        if info["student"] != "lora":
            raise NotReady(f"{name} is not a generative student")
        self.name = str(info["name"])
        self.external_url = external_url.rstrip("/") if external_url else None
        self.system_prompt: str | None = info.get("system_prompt")
        longest = (info.get("metrics") or {}).get("max_answer_tokens")
        self.max_tokens = int(longest * 1.5) + 8 if isinstance(longest, int) and longest > 0 else DEFAULT_MAX_TOKENS
        self.metric = eval_metric(folder)
        base, adapter = serving_files(folder, info) if self.external_url is None else (Path(), Path())
        self.server = LlamaCppProcess(self.name, base, adapter, log_dir)
        self.failures = 0
        self._lock = asyncio.Lock()  # llama.cpp answers one request at a time: measure each one's CPU alone
        self._provider: Any = None
        self._starting: asyncio.Future[None] | None = None

    def _messages(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """The request's messages as trained (pruned system prompt removed), and whether they look trained."""
        if self.system_prompt is None:
            return messages, True
        first = messages[0] if messages else {}
        if first.get("role") in ("system", "developer"):
            return messages[1:], first.get("content") == self.system_prompt
        return messages, False

    async def _ensure(self) -> Any:
        """The client of a running server: (re)starts it when it is not running, in the background (a caller
        that gives up waiting leaves the start going; the teacher answers it meanwhile). An external server
        (`[inhouse] generative_base_url`) is neither started nor supervised."""
        if self.external_url is not None:
            return self._client(self.external_url)
        if self._starting is None and not self.server.alive():
            if self.server.starts:
                self.failures += 1  # it died: counted and restarted
            self._provider = None
            self._starting = asyncio.ensure_future(asyncio.to_thread(self.server.start))
            self._starting.add_done_callback(self._started)
        if self._starting is not None:
            await asyncio.shield(self._starting)
        return self._client(f"http://127.0.0.1:{self.server.port}/v1")

    def _client(self, url: str) -> Any:
        if self._provider is None:
            from insource.providers.openai import OpenAIProvider

            cfg = ProviderConfig(kind="openai", base_url=url, terms="self-hosted", max_retries=0,
                                 ttft_timeout_s=ANSWER_TIMEOUT_S, total_timeout_s=ANSWER_TIMEOUT_S)  # fmt: skip
            self._provider = OpenAIProvider(self.name, cfg)
        return self._provider

    def _started(self, task: asyncio.Future[None]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            self.failures += 1

    async def complete(self, body: dict[str, Any], ids: ReplyIds) -> StudentReply:
        """The student's reply to the chat request `body` (raises when it cannot answer: the teacher does)."""
        async with asyncio.timeout(ANSWER_TIMEOUT_S):
            text, conf, ood, compute_s = await self._generate(body)
        usage = Usage(prompt_tokens(body.get("messages")), 0, completion_tokens(text, 1), 0)
        return StudentReply(
            text=text,
            confidence=conf,
            body=completion_body(self.name, text, 1, usage, ids),
            usage=usage,
            ood=ood,
            compute_s=compute_s,
        )

    def stream(
        self, body: dict[str, Any], reply: StudentReply, ids: ReplyIds, include_usage: bool
    ) -> AsyncIterator[bytes]:
        return completion_events(self.name, reply.text, 1, reply.usage, ids, include_usage)

    async def _generate(self, body: dict[str, Any]) -> tuple[str, float, bool, float]:
        """(answer, confidence, cannot be served, CPU seconds) from the llama.cpp (or external) server."""
        messages, trained = self._messages(list(body.get("messages") or []))
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        limit = min(self.max_tokens, int(wanted)) if isinstance(wanted, int) and wanted > 0 else self.max_tokens
        request = {"messages": messages, "max_tokens": limit, "temperature": 0.0, "logprobs": True, "top_logprobs": 1}
        if self.external_url is None:  # llama_cpp.server's default repeat penalty is 1.1; eval answered with none
            request["repeat_penalty"] = 1.0
        provider = await self._ensure()
        async with self._lock:
            pid = self.server.proc.pid if self.server.proc and self.external_url is None else 0
            before, wall = _cpu_seconds(pid), time.perf_counter()
            resp = await provider.complete(self.name, request)
            after = _cpu_seconds(pid)
        spent = after - before if after is not None and before is not None else time.perf_counter() - wall
        choice = resp.data["choices"][0]
        text = str((choice.get("message") or {}).get("content") or "")
        lps = [float(t["logprob"]) for t in ((choice.get("logprobs") or {}).get("content") or [])]
        usable = bool(lps) and trained and choice.get("finish_reason") == "stop"  # no log-probs: no confidence
        usable = usable and (self.metric != "json" or parses(text))
        conf = math.exp(min(0.0, min(lps, default=0.0))) if usable else 0.0
        return text, conf, not usable, max(0.0, spent)

    async def close(self) -> None:
        if self._provider is not None:
            await self._provider.close()
        await asyncio.to_thread(self.server.stop)


class GenerativePool:
    """The generative students a worker serves, by name; their llama.cpp servers stop with the worker."""

    def __init__(self, registry: Path, external_url: str | None = None) -> None:
        self.registry = registry
        self.external_url = external_url
        self.students: dict[str, GenerativeStudent] = {}
        self._kinds: dict[str, bool] = {}

    def serves(self, name: str) -> bool:
        """Whether `name` is a generative student (model.json read once per name)."""
        known = self._kinds.get(name)
        if known is None:
            try:
                known = read_model_info(resolve(self.registry, name))["student"] == "lora"
            except InsourceError:  # not registered (yet), or a damaged entry: not ours to serve
                known = False
            self._kinds[name] = known
        return known

    def get(self, name: str) -> GenerativeStudent:
        student = self.students.get(name)
        if student is None:
            student = GenerativeStudent(self.registry, name, self.registry / ".serving", self.external_url)
            self.students[name] = student
        return student

    async def close(self) -> None:
        for student in self.students.values():
            await student.close()
