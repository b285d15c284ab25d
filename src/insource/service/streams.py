"""Reading an upstream SSE stream as it is relayed: usage, output reassembly, usage-chunk stripping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from insource.metering.usage import Usage, parse_usage


@dataclass(slots=True)
class StreamAccumulator:
    client_wants_usage: bool
    content: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    model: str | None = None
    response_id: str | None = None
    usage: Usage | None = None
    chunks: int = 0
    done: bool = False

    def feed(self, events: bytes) -> bytes | None:
        """Account for one or more whole SSE events (as one upstream read brought them); returns the bytes to
        relay (unchanged when possible) or None to drop."""
        if events.find(b"\n\n") >= len(events) - 2:  # one event: the common case when the upstream is slower
            return self._feed_one(events)
        out = []
        for part in events.split(b"\n\n"):
            if part.strip():
                relay = self._feed_one(part + b"\n\n")
                if relay is not None:
                    out.append(relay)
        return b"".join(out) if out else None

    def _feed_one(self, event: bytes) -> bytes | None:
        """Account for one SSE event; returns the bytes to relay (unchanged when possible) or None to drop."""
        if not event.startswith(b"data:"):
            return event
        payload = event[5:].strip()
        if payload == b"[DONE]":
            self.done = True
            return event
        try:
            data = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(data, dict):
            return event
        self.chunks += 1
        self.model = data.get("model") or self.model
        self.response_id = data.get("id") or self.response_id
        choices = data.get("choices") or []
        changed = False
        for choice in choices:
            if isinstance(choice, dict):
                if choice.get("index", 0) == 0:
                    self._take_choice(choice)
                if "delta" not in choice:  # Azure's content-filter-only choice: OpenAI clients require a delta
                    choice["delta"] = {}
                    changed = True
        raw_usage = data.get("usage")
        if raw_usage:
            self.usage = parse_usage(raw_usage)
            if not self.client_wants_usage:
                if not choices:
                    return None
                data.pop("usage", None)
                changed = True
        return b"data: " + orjson.dumps(data) + b"\n\n" if changed else event

    def _take_choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        if isinstance(delta, dict):
            piece = delta.get("content")
            if isinstance(piece, str):
                self.content.append(piece)
            for call in delta.get("tool_calls") or []:
                self._take_tool_call(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

    def _take_tool_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        slot = self.tool_calls.setdefault(
            int(call.get("index", 0)), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.get("id"):
            slot["id"] = call["id"]
        fn = call.get("function") or {}
        if fn.get("name"):
            slot["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            slot["function"]["arguments"] += fn["arguments"]

    def output(self) -> str | None:
        if self.tool_calls:
            return orjson.dumps([self.tool_calls[i] for i in sorted(self.tool_calls)]).decode()
        return "".join(self.content) if self.content or self.finish_reason else None

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {
            "id": self.response_id,
            "object": "chat.completion",
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
        }


def output_of(response: dict[str, Any]) -> tuple[str | None, str | None]:
    """(choice 0's text or tool calls as JSON, finish_reason) of a non-streamed chat completion."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None, None
    message = choices[0].get("message") or {}
    finish = choices[0].get("finish_reason")
    if not isinstance(message, dict):
        return None, finish
    if message.get("tool_calls"):
        return orjson.dumps(message["tool_calls"]).decode(), finish
    content = message.get("content")
    return (content if isinstance(content, str) else None), finish
