"""The dataset's chat JSONL (OpenAI fine-tuning format) as generative students train and are evaluated on it:
reading it, the system prompt repeated in every conversation (pruned), the plain prompt of a template-less base.
"""

from __future__ import annotations

import json
from pathlib import Path

from insource.errors import NotReady

Chat = list[dict[str, str]]


def read_chat(path: Path) -> list[Chat]:
    if not path.is_file():
        raise NotReady(f"corrupt dataset: {path.name} (chat JSONL for the LoRA student) is missing")
    out = []
    for lineno, line in enumerate(path.read_text("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise NotReady(f'corrupt dataset: {path.name} line {lineno} needs {{"messages": [...]}}') from None
        if not messages or messages[-1].get("role") != "assistant":
            raise NotReady(f"corrupt dataset: {path.name} line {lineno} must end with the assistant's answer")
        out.append(messages)
    return out


def repeated_system(chats: list[Chat]) -> str | None:
    """The system prompt every conversation starts with, when there is one and it is the same everywhere."""
    firsts = {c[0].get("content") or "" for c in chats if c and c[0].get("role") == "system"}
    every = all(c and c[0].get("role") == "system" for c in chats)
    return next(iter(firsts)) if chats and every and len(firsts) == 1 else None


def prune_system(messages: Chat, system: str | None) -> Chat:
    """`messages` without the pruned system prompt (the student learnt the task without reading it)."""
    first = messages[0] if messages else {}
    if system is not None and first.get("role") == "system" and (first.get("content") or "") == system:
        return messages[1:]
    return messages


def plain_prompt(messages: Chat) -> str:
    return "".join(f"<|{m.get('role')}|>\n{m.get('content') or ''}\n" for m in messages) + "<|assistant|>\n"
