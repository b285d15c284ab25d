"""`insource eval` for a generative (LoRA) student: generate on validation and the evaluated split, judge each
answer against the teacher's with the task's metric (`routing.agreement`), and choose the cascade threshold on the
student's confidence exactly as for classifiers (Wilson lower-bound margin on validation).

Confidence: the probability of the least likely token of the answer (exp of the minimum token log-prob), set
to 0 when the answer cannot be served (stopped on length, or for a `json` task not JSON or holding a value of a
copied field that is not in the prompt: `routing/copied.py`, or a key or label the teacher's answers never use:
`routing/shape.py`). The minimum
separated right from wrong answers far better than sequence averages, which are length-biased.

The student runs on the engine that serves it: llama.cpp (base GGUF + `adapter.gguf`, in process) when both
are there, else transformers + peft on the Hugging Face base (bases without a GGUF, e.g. in tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from insource.errors import NotReady
from insource.registry.llama_check import preflight
from insource.routing import agreement as T
from insource.routing.copied import json_servable, prompt_text

DEFAULT_MAX_TOKENS = 256
LLAMA_THREADS = 1  # CPU per answer is what a student costs: see bench/results/generative_cost.md


@dataclass(frozen=True)
class Generated:
    text: str
    min_logprob: float  # of the answer's tokens (0.0 for an empty answer)
    finish: str  # "stop" or "length"
    cpu_s: float
    wall_s: float


class Generator(Protocol):
    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> Generated: ...


class LlamaCppGenerator:
    """The base GGUF with the adapter applied, in process, as served: one thread (prompt and decode alike: a
    second one spins at every barrier, measured ~7x the CPU per answer on a busy box), token log-probs from
    `LogprobLlama` (no `logits_all`, no vocabulary sort per token)."""

    def __init__(self, base_gguf: Path, adapter_gguf: Path, n_ctx: int = 2048) -> None:
        from insource.registry.llama import LogprobLlama

        self.llm = LogprobLlama(
            model_path=str(base_gguf),
            lora_path=str(adapter_gguf),
            n_ctx=n_ctx,
            n_threads=LLAMA_THREADS,
            n_threads_batch=LLAMA_THREADS,
            verbose=False,
        )

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> Generated:
        wall, cpu = time.perf_counter(), time.process_time()
        reply: Any = self.llm.create_chat_completion(
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0.0,
            logprobs=True,
            top_logprobs=1,
        )
        choice = reply["choices"][0]
        lps = [float(t["logprob"]) for t in ((choice.get("logprobs") or {}).get("content") or [])]
        return Generated(
            text=str(choice["message"].get("content") or ""),
            min_logprob=min(lps, default=0.0),
            finish=str(choice.get("finish_reason") or "stop"),
            cpu_s=time.process_time() - cpu,
            wall_s=time.perf_counter() - wall,
        )


class HFGenerator:
    """Greedy decoding with transformers + peft (the base model and the safetensors adapter)."""

    def __init__(self, folder: Path, base_model: str) -> None:
        import warnings

        from peft import PeftModel

        from insource.registry.lora_base import load_base, resolve_base

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, self.tok = load_base(resolve_base(Path(base_model)))
            self.model = PeftModel.from_pretrained(model, str(folder / "adapter")).eval()

    def generate(self, messages: list[dict[str, str]], max_tokens: int) -> Generated:
        import torch

        from insource.capture.chat import plain_prompt

        wall, cpu = time.perf_counter(), time.process_time()
        if getattr(self.tok, "chat_template", None):
            prompt = str(self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        else:
            prompt = plain_prompt(messages)
        ids = self.tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=self.tok.pad_token_id,
            )
        new = out.sequences[0, ids.shape[1] :].tolist()
        lps = [float(torch.log_softmax(s[0].float(), -1)[t]) for s, t in zip(out.scores, new, strict=False)]
        eos = self.tok.eos_token_id
        stopped = bool(new) and new[-1] == eos
        text = self.tok.decode(new[:-1] if stopped else new, skip_special_tokens=True)
        return Generated(
            text,
            min(lps, default=0.0),
            "stop" if stopped else "length",
            time.process_time() - cpu,
            time.perf_counter() - wall,
        )


def generator_for(folder: Path, info: dict[str, Any]) -> Generator:
    runtime = info.get("runtime") or {}
    base_gguf = runtime.get("base_gguf")
    adapter = folder / "adapter.gguf"
    if base_gguf and Path(base_gguf).is_file() and adapter.is_file():
        crashed = preflight(Path(base_gguf))  # a crash in process would end the command without a word
        if crashed is not None:
            raise NotReady(f"{folder.name}: llama.cpp cannot answer on this machine: {crashed}")
        try:
            return LlamaCppGenerator(Path(base_gguf), adapter)
        except ImportError:
            pass  # llama-cpp-python is not installed: transformers below
        except ValueError as exc:  # llama.cpp refuses the files (an adapter of another base, a damaged file)
            raise NotReady(f"{folder.name}: llama.cpp cannot load its base and adapter ({exc})") from None
    return HFGenerator(folder, str(info.get("base_model") or ""))


def confidence(
    gen: Generated,
    metric: str,
    prompt: str = "",
    copied: dict[str, Any] | None = None,
    shape: dict[str, Any] | None = None,
) -> float:
    """exp(min token log-prob), or 0 when the answer cannot be served (length stop, unparsable JSON, a value of a
    copied field that is not in the prompt: `routing/copied.py`, a key or label the teacher never answers with:
    `routing/shape.py`)."""
    if gen.finish != "stop" or (metric == "json" and not json_servable(gen.text, prompt, copied, shape)):
        return 0.0
    return float(math.exp(min(0.0, gen.min_logprob)))


def max_tokens(info: dict[str, Any]) -> int:
    longest = (info.get("metrics") or {}).get("max_answer_tokens")
    return int(longest * 1.5) + 8 if isinstance(longest, int) and longest > 0 else DEFAULT_MAX_TOKENS


def field_accuracy(answers: list[str], teacher: list[str]) -> dict[str, float]:
    counts: dict[str, list[int]] = {}
    for mine, theirs in zip(answers, teacher, strict=True):
        for key, ok in T.field_matches(mine, theirs).items():
            counts.setdefault(key, []).append(int(ok))
    return {key: round(sum(v) / len(v), 5) for key, v in sorted(counts.items())}


@dataclass
class GenScored:
    answers: list[str]
    conf: np.ndarray
    ood: np.ndarray
    correct: np.ndarray
    cpu_s: list[float]
    wall_s: list[float]


Grader = Callable[[list[list[dict[str, str]]], list[str]], list[bool]]  # (chats, answers) -> agree?


def score(
    gen: Generator, chats: list[list[dict[str, str]]], info: dict[str, Any], metric: str, grade: Grader | None = None
) -> GenScored:
    """Generate an answer to each chat and judge it against the teacher's: by `metric`, or by `grade` (the
    `judge` metric, which asks the teacher: `evals/judge.py`)."""
    from insource.capture.chat import prune_system

    system, limit = info.get("system_prompt"), max_tokens(info)
    outs = [gen.generate(prune_system(chat[:-1], system), limit) for chat in chats]
    teacher = [str(chat[-1].get("content") or "") for chat in chats]
    copied, shape = info.get("copied_fields"), info.get("answer_shape")
    prompts = [prompt_text(chat[:-1]) for chat in chats]
    conf = np.array([confidence(g, metric, p, copied, shape) for g, p in zip(outs, prompts, strict=True)], dtype=float)
    answers = [g.text for g in outs]
    if grade is not None:
        correct = grade(chats, answers)
    else:
        correct = [T.agree(metric, a, t) for a, t in zip(answers, teacher, strict=True)]
    return GenScored(
        answers=answers,
        conf=conf,
        ood=conf <= 0.0,
        correct=np.array(correct, dtype=bool),
        cpu_s=[g.cpu_s for g in outs],
        wall_s=[g.wall_s for g in outs],
    )
