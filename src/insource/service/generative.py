"""Generative (LoRA) students served by llama.cpp: a server process per student that the gateway supervises,
and the client that asks it for an answer and its confidence over the OpenAI wire.

`LlamaCppProcess` runs `python -m insource.registry.llama_server` (llama-cpp-python's server answering token
log-probs without `logits_all`) with the student's base GGUF and `--lora_path adapter.gguf`, one thread, on a free
127.0.0.1 port, waits until it answers, and is
started again when it has died (at most once every `RESTART_BACKOFF_S`). `GenerativeStudent.complete` sends the
request (the pruned system prompt removed, greedy, `logprobs`), and returns the answer with its confidence:
exp(minimum token log-prob), 0 when it stopped on length or, for a `json` task, does not parse or holds a value
of a copied field that is not in the prompt (`routing/copied.py`) or a key or label the teacher's answers never
use (`routing/shape.py`). Any failure
raises: the router counts it and the teacher answers. A server that uses no CPU for `STALL_S` while answering is
hung (stopped, deadlocked): it is killed at once, the request fails, and the next request restarts it. An answer
(or, streamed, a token) that takes longer than `[inhouse] generative_timeout_s` fails too (and its server is
killed): that also covers a server spinning without answering, and external servers.
No ML import here: llama.cpp runs in the child process.

Streaming. In full and canary modes nothing gates the answer, so `live` relays llama.cpp's token stream as it
comes (the caller's time to first token is the model's). In cascade the confidence — the least likely token's
probability — is known only once the whole answer is generated, and an answer below the threshold must go to the
teacher before the caller saw any of it: `complete` generates it first, and `stream` then sends it in
token-sized chunks (llama.cpp's own tokens). A `json` task is never streamed live either: its answer is served
only when it parses. Once a live stream has sent its first token the teacher can no longer take over: a student
that breaks after that ends the stream with an error event (counted like any student failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
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

import orjson

from insource.config import ProviderConfig
from insource.errors import InsourceError, NotReady, UpstreamError, UpstreamTimeout
from insource.metering.usage import Usage
from insource.registry.entries import EVAL_FILE, read_json, read_model_info, resolve
from insource.registry.llama_check import how_it_ended
from insource.routing.agreement import METRICS
from insource.routing.copied import json_servable, prompt_text
from insource.routing.tokens import completion_tokens, prompt_tokens
from insource.service.answerers import (
    ChunkWriter,
    LiveStats,
    ReplyIds,
    StudentReply,
    completion_body,
    completion_events,
)

log = logging.getLogger("insource.generative")
START_TIMEOUT_S = 120.0
RESTART_BACKOFF_S = 5.0
DEFAULT_MAX_TOKENS = 256
STALL_S = 3.0  # a llama.cpp server that used no CPU this long while answering is hung: killed, the teacher answers
STALL_CHECK_S = 0.25
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
    """One supervised llama.cpp server (`insource.registry.llama_server`) serving a base GGUF with one adapter."""

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

    def how_it_ended(self) -> str:
        """How the server process ended, for the log: its exit code, or the signal that ended it (with what to do
        when it crashed: llama.cpp built for features this CPU or VM does not allow)."""
        return how_it_ended(None if self.proc is None else self.proc.returncode)

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
                why = self.how_it_ended()
                raise NotReady(f"the llama.cpp server of {self.name} exited at start: {why} (its log: {self.log_dir})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise NotReady(f"the llama.cpp server of {self.name} did not start within {START_TIMEOUT_S:g}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def kill(self) -> None:
        """Kill a hung server at once (SIGKILL also ends a stopped process); the next request restarts it."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)


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


def adapter_mismatch(base: Path, adapter: Path) -> str | None:
    """Why the LoRA adapter GGUF does not fit the base GGUF (a tensor it changes is missing from the base or has
    other dimensions: an adapter trained on another base), or None. Reads the two files' headers (`gguf`)."""
    from gguf import GGUFReader

    try:
        shapes = {t.name: [int(d) for d in t.shape] for t in GGUFReader(base).tensors}
        tensors = [(t.name, [int(d) for d in t.shape]) for t in GGUFReader(adapter).tensors]
    except (OSError, ValueError, KeyError, IndexError) as exc:  # not a GGUF file, or a damaged one
        return f"its GGUF files cannot be read ({type(exc).__name__}: {exc})"
    for name, dims in tensors:
        target, _, part = name.rpartition(".")
        if part not in ("lora_a", "lora_b"):
            continue
        want = shapes.get(target)
        if want is None:
            return f"the adapter changes {target}, which the base model {base.name} does not have"
        # ggml order: the base's [n_in, n_out]; lora_a [n_in, r], lora_b [r, n_out]
        if (
            len(dims) != 2
            or len(want) != 2
            or (part == "lora_a" and dims[0] != want[0])
            or (part == "lora_b" and dims[1] != want[1])
        ):
            return f"the adapter's {name} has dimensions {dims}, which do not fit {target} {want} of {base.name}"
    return None


def check_servable(registry: Path, name: str, external_url: str | None) -> None:
    """For `route set` and `serve`: NotReady when a LoRA student's adapter GGUF does not fit its base GGUF (an
    adapter built on another base), unless an external server serves it. A student without GGUF files passes:
    an external server may serve it later; until then the teacher answers it (each attempt counted)."""
    folder = resolve(registry, name)
    info = read_model_info(folder)
    if info.get("student") != "lora" or external_url:
        return
    try:
        base, adapter = serving_files(folder, info)
    except NotReady:
        return
    why = adapter_mismatch(base, adapter)
    if why is not None:
        raise NotReady(f"{folder.name} cannot be served on its base model: {why} (an adapter built on another base?)")


def eval_metric(folder: Path) -> str:
    """The metric `insource eval` judged the student with (audits and shadow runs use it), default exact."""
    path = folder / EVAL_FILE
    if not path.is_file():
        return "exact"
    latest = read_json(path).get("latest")
    metric = latest.get("metric") if isinstance(latest, dict) else None
    return str(metric) if metric in METRICS else "exact"


class GenerativeStudent:
    """A LoRA student answering through its supervised llama.cpp server."""

    def __init__(
        self, registry: Path, name: str, log_dir: Path, external_url: str | None = None, timeout_s: float = 60.0
    ) -> None:
        folder = resolve(registry, name)
        info = read_model_info(folder)
        if info["student"] != "lora":
            raise NotReady(f"{name} is not a generative student")
        self.name = str(info["name"])
        self.external_url = external_url.rstrip("/") if external_url else None
        self.timeout_s = timeout_s
        self.system_prompt: str | None = info.get("system_prompt")
        self.copied: dict[str, Any] | None = info.get("copied_fields")  # `routing/copied.py`
        self.shape: dict[str, Any] | None = info.get("answer_shape")  # `routing/shape.py`
        longest = (info.get("metrics") or {}).get("max_answer_tokens")
        self.max_tokens = int(longest * 1.5) + 8 if isinstance(longest, int) and longest > 0 else DEFAULT_MAX_TOKENS
        self.folder = folder
        self._metric: tuple[float, str] = (-1.0, "exact")  # (eval.json's mtime, its metric)
        self.unservable: str | None = None  # why it cannot be served (raised when asked: the teacher answers)
        base, adapter = Path(), Path()
        if self.external_url is None:
            try:
                base, adapter = serving_files(folder, info)
            except NotReady as exc:
                self.unservable = exc.message
        self.server = LlamaCppProcess(self.name, base, adapter, log_dir)
        self.failures = 0
        self._lock = asyncio.Lock()  # llama.cpp answers one request at a time: measure each one's CPU alone
        self._provider: Any = None
        self._starting: asyncio.Future[None] | None = None

    @property
    def metric(self) -> str:
        """The metric of the student's latest `insource eval` (read again when eval.json changes: a new eval
        applies without a restart)."""
        try:
            mtime = (self.folder / EVAL_FILE).stat().st_mtime
        except OSError:
            mtime = 0.0
        if mtime != self._metric[0]:
            self._metric = (mtime, eval_metric(self.folder))
        return self._metric[1]

    def _messages(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
        """The request's messages as trained (pruned system prompt removed), and whether they look trained."""
        if self.system_prompt is None:
            return messages, True
        first = messages[0] if messages else {}
        if first.get("role") in ("system", "developer"):
            return messages[1:], first.get("content") == self.system_prompt
        return messages, False

    def _request(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The llama.cpp request for the caller's `body` (greedy, token log-probs), and whether it looks trained."""
        messages, trained = self._messages(list(body.get("messages") or []))
        wanted = body.get("max_completion_tokens") or body.get("max_tokens")
        limit = min(self.max_tokens, int(wanted)) if isinstance(wanted, int) and wanted > 0 else self.max_tokens
        request = {"messages": messages, "max_tokens": limit, "temperature": 0.0, "logprobs": True, "top_logprobs": 1}
        if self.external_url is None:  # llama_cpp.server's default repeat penalty is 1.1; eval answered with none
            request["repeat_penalty"] = 1.0
        return request, trained

    def streams_live(self, body: dict[str, Any]) -> bool:
        """Whether an answer to `body` may be streamed as it is generated (full and canary modes): not for a
        `json` task (its answer is served only when it parses, known at the end) nor an untrained prompt."""
        return self.metric != "json" and self._messages(list(body.get("messages") or []))[1]

    async def _ensure(self) -> Any:
        """The client of a running server: (re)starts it when it is not running, in the background (a caller
        that gives up waiting leaves the start going; the teacher answers it meanwhile). An external server
        (`[inhouse] generative_base_url`) is neither started nor supervised."""
        if self.external_url is not None:
            return self._client(self.external_url)
        if self.unservable is not None:
            raise NotReady(self.unservable)
        if self._starting is None and not self.server.alive():
            if self.server.starts:
                self.failures += 1  # it died: counted and restarted
                log.warning("the llama.cpp server of %s died: %s", self.server.name, self.server.how_it_ended())
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
                                 ttft_timeout_s=self.timeout_s, total_timeout_s=self.timeout_s)  # fmt: skip
            self._provider = OpenAIProvider(self.name, cfg)
        return self._provider

    def _started(self, task: asyncio.Future[None]) -> None:
        self._starting = None
        if not task.cancelled() and task.exception() is not None:
            self.failures += 1

    def _hung(self) -> None:
        """The server did not answer in time: killed (it restarts on the next request), unless it is external."""
        self.failures += 1
        if self.external_url is None:
            self.server.kill()

    async def _watch(self, pid: int) -> None:
        """While a request is with the server: kill it when its CPU time stops growing for `STALL_S` (stopped,
        deadlocked, waiting on nothing): the request then fails at once and the teacher answers, however long
        the answer's timeout. A slow server on a loaded machine still gets CPU ticks, so it is not cut short."""
        last, since = _cpu_seconds(pid), time.monotonic()
        while True:
            await asyncio.sleep(STALL_CHECK_S)
            now, cpu = time.monotonic(), _cpu_seconds(pid)
            if cpu is None or self.server.proc is None or self.server.proc.pid != pid:
                return  # gone, or replaced
            if last is None or cpu > last:
                last, since = cpu, now
            elif now - since >= STALL_S:
                log.warning("the llama.cpp server of %s used no CPU for %.0f s while answering: killed", self.name,
                            now - since)  # fmt: skip
                self._hung()
                return

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[tuple[float | None, float]]:
        """This request's turn on the server (one at a time, so its CPU time is its own): (CPU s, wall s) at the
        start, with a watchdog on the server while the request is with it. Waiting for the turn counts in the
        answer's timeout."""
        async with asyncio.timeout(self.timeout_s):
            await self._lock.acquire()
        pid = self.server.proc.pid if self.server.proc and self.external_url is None else 0
        watchdog = asyncio.ensure_future(self._watch(pid)) if pid else None
        try:
            yield _cpu_seconds(pid), time.perf_counter()
        finally:
            if watchdog is not None:
                watchdog.cancel()
            self._lock.release()

    def _spent(self, start: tuple[float | None, float]) -> float:
        pid = self.server.proc.pid if self.server.proc and self.external_url is None else 0
        after = _cpu_seconds(pid)
        spent = after - start[0] if after is not None and start[0] is not None else time.perf_counter() - start[1]
        return max(0.0, spent)

    async def complete(self, body: dict[str, Any], ids: ReplyIds) -> StudentReply:
        """The student's reply to the chat request `body` (raises when it cannot answer: the teacher does). A
        server that takes longer than the timeout is killed (and restarted by the next request)."""
        request, trained = self._request(body)
        provider = await self._ensure()  # a start is waited for apart from the answer's timeout
        try:
            async with self._turn() as start, asyncio.timeout(self.timeout_s):
                resp = await provider.complete(self.name, request)
                compute_s = self._spent(start)
        except (TimeoutError, UpstreamTimeout):
            self._hung()
            raise
        copies = (prompt_text(body.get("messages") or []), self.copied, self.shape)
        text, conf, usable, pieces = _read_answer(resp.data, trained, self.metric, copies)
        usage = Usage(prompt_tokens(body.get("messages")), 0, completion_tokens(text, 1), 0)
        return StudentReply(
            text=text,
            confidence=conf,
            body=completion_body(self.name, text, 1, usage, ids),
            usage=usage,
            ood=not usable,
            compute_s=compute_s,
            pieces=pieces,
        )

    def stream(
        self, body: dict[str, Any], reply: StudentReply, ids: ReplyIds, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """A reply generated (and judged) before it is sent, streamed one chunk per generated token."""
        return completion_events(self.name, reply.text, 1, reply.usage, ids, include_usage, reply.pieces)

    async def live(
        self, body: dict[str, Any], ids: ReplyIds, include_usage: bool, stats: LiveStats
    ) -> AsyncIterator[bytes]:
        """llama.cpp's token stream relayed as it comes: the first event is sent with the first token. Raises
        (and kills a hung server) when a token takes longer than the timeout or the stream breaks."""
        request, _ = self._request(body)
        provider = await self._ensure()
        out = ChunkWriter(self.name, ids, include_usage)
        async with self._turn() as start:
            plain = {k: v for k, v in request.items() if k not in ("logprobs", "top_logprobs")}
            stream = await provider.stream(self.name, {**plain, "stream": True})
            pieces: list[str] = []
            try:
                async for piece, finish in self._pieces(stream):
                    if stats.ttft_s is None and (piece or finish):  # the first token (not llama.cpp's role chunk)
                        stats.ttft_s = time.perf_counter()
                        yield out.delta({"role": "assistant", "content": ""})
                    if piece:
                        pieces.append(piece)
                        yield out.delta({"content": piece})
                    if finish:
                        stats.finish_reason = finish
            finally:
                await stream.aclose()
                stats.compute_s = self._spent(start)
                stats.text = "".join(pieces)
        if stats.finish_reason is None:
            raise UpstreamError(f"the llama.cpp server of {self.name} ended its stream without finishing")
        stats.usage = Usage(prompt_tokens(body.get("messages")), 0, completion_tokens(stats.text, 1), 0)
        yield out.delta({}, finish=stats.finish_reason) + out.end(stats.usage)

    async def _pieces(self, stream: Any) -> AsyncIterator[tuple[str, str | None]]:
        """(content, finish_reason) of each chunk of llama.cpp's stream, each awaited at most the timeout."""
        events = stream.__aiter__()
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    raw = await anext(events, None)
            except (TimeoutError, UpstreamTimeout):
                self._hung()
                raise
            if raw is None:
                return
            for data in sse_payloads(raw):
                if data is None:
                    return
                for choice in data.get("choices") or []:
                    if isinstance(choice, dict) and choice.get("index", 0) == 0:
                        delta = choice.get("delta") or {}
                        yield str(delta.get("content") or ""), choice.get("finish_reason")

    async def close(self) -> None:
        if self._provider is not None:
            await self._provider.close()
        await asyncio.to_thread(self.server.stop)


def sse_payloads(raw: bytes) -> list[dict[str, Any] | None]:
    """The JSON objects of the `data:` events in `raw` (None for `[DONE]`); comments and other lines skipped."""
    out: list[dict[str, Any] | None] = []
    for line in raw.splitlines():
        if not line.startswith(b"data:"):
            continue
        payload = line[5:].strip()
        if payload == b"[DONE]":
            out.append(None)
            continue
        with contextlib.suppress(orjson.JSONDecodeError):
            data = orjson.loads(payload)
            if isinstance(data, dict):
                out.append(data)
    return out


def _read_answer(
    data: dict[str, Any],
    trained: bool,
    metric: str,
    copies: tuple[str, dict[str, Any] | None, dict[str, Any] | None] = ("", None, None),
) -> tuple[str, float, bool, tuple[str, ...]]:
    """(answer, confidence, whether it can be served, its tokens) of llama.cpp's reply: confidence exp(min token
    log-prob), 0 when it cannot be served (an untrained prompt, a stop on length, for `json` unparsable JSON, a
    value of a copied field not in the prompt or a key or label the teacher never uses: `copies` is (the prompt's
    text, the model's copied fields, its answer shape))."""
    choice = data["choices"][0]
    text = str((choice.get("message") or {}).get("content") or "")
    tokens = [t for t in ((choice.get("logprobs") or {}).get("content") or []) if isinstance(t, dict)]
    lps = [float(t["logprob"]) for t in tokens]
    usable = bool(lps) and trained and choice.get("finish_reason") == "stop"  # no log-probs: no confidence
    usable = usable and (metric != "json" or json_servable(text, *copies))
    conf = math.exp(min(0.0, min(lps, default=0.0))) if usable else 0.0
    return text, conf, usable, tuple(str(t.get("token") or "") for t in tokens)


class GenerativePool:
    """The generative students a worker serves, by name; their llama.cpp servers stop with the worker."""

    def __init__(self, registry: Path, external_url: str | None = None, timeout_s: float = 60.0) -> None:
        self.registry = registry
        self.external_url = external_url
        self.timeout_s = timeout_s
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
            student = GenerativeStudent(
                self.registry, name, self.registry / ".serving", self.external_url, self.timeout_s
            )
            self.students[name] = student
        return student

    async def close(self) -> None:
        for student in self.students.values():
            await student.close()
