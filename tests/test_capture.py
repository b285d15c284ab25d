"""process_capture: consent, content addressing, params, provenance, and a real writer into SQLite."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from insource.capture.process import canonical, process_capture
from insource.capture.record import CaptureRaw
from insource.capture.terms import load_profiles, resolve
from insource.config import parse_config
from insource.errors import ConfigError
from insource.service.streams import StreamAccumulator, output_of
from insource.store import Store
from insource.store.writer import BatchWriter

SYSTEM = {"role": "system", "content": "Classify the message. Labels: a, b, c."}


def raw(i: int = 0, **kw: Any) -> CaptureRaw:
    fields: dict[str, Any] = {
        "id": f"r{i}",
        "ts": 1000.0 + i,
        "tenant": "t1",
        "key_id": "k1",
        "task": "t",
        "model": "m",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "served_by": "openai:gpt-4o-mini",
        "terms": "openai",
        "consent": True,
        "redact": True,
        "redactors": ("secrets", "email", "phone", "card", "iban"),
        "request": {
            "model": "m",
            "messages": [SYSTEM, {"role": "user", "content": f"message {i} from x{i}@mail.example"}],
            "temperature": 0.2,
            "user": "alice@corp.example",
            "api_key": "sk-should-never-be-stored-0123456789",
        },
        "output": f"b (reply to x{i}@mail.example)",
        "response": {"model": "gpt-4o-mini-2024-07-18"},
        "upstream_version": "gpt-4o-mini-2024-07-18",
        "finish_reason": "stop",
        "status": 200,
    }
    fields.update(kw)
    return CaptureRaw(**fields)


def test_no_consent_writes_nothing() -> None:
    assert process_capture(raw(consent=False)) == []


def test_rows_blobs_and_provenance() -> None:
    rows = process_capture(raw(1))
    tables = [t for t, _, _ in rows]
    assert tables == ["blobs", "blobs", "captures"]
    assert all(ignore for _, _, ignore in rows)
    blobs = [r for t, r, _ in rows if t == "blobs"]
    for b in blobs:
        assert b["hash"] == hashlib.sha256(b["data"].encode()).hexdigest()
    assert orjson.loads(blobs[0]["data"]) == SYSTEM
    assert orjson.loads(blobs[1]["data"]) == {"role": "user", "content": "message 1 from [EMAIL]"}
    cap = rows[-1][1]
    assert orjson.loads(cap["messages"]) == [b["hash"] for b in blobs]
    params = orjson.loads(cap["params"])
    assert params == {"model": "m", "temperature": 0.2, "user": "[EMAIL]", "api_key": "[SECRET]"}
    assert cap["output"] == "b (reply to [EMAIL])"
    assert cap["output_hash"] == hashlib.sha256(cap["output"].encode()).hexdigest()
    assert orjson.loads(cap["redactors"]) == ["secrets", "iban", "card", "email", "phone"]
    assert orjson.loads(cap["redactions"]) == {"email": 3, "secrets": 1}
    assert (cap["provider"], cap["upstream_version"], cap["terms"], cap["consent"]) == (
        "openai",
        "gpt-4o-mini-2024-07-18",
        "openai",
        1,
    )
    orjson.dumps(rows)  # rows must be spoolable as JSON by the writer


def test_canonical_hash_ignores_key_order_and_repeats_are_stored_once(tmp_path: Path) -> None:
    assert canonical({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == canonical({"a": [1, {"c": 3, "d": 2}], "b": 1})
    store = Store(tmp_path / "db.sqlite")
    writer = BatchWriter(store, tmp_path / "spool", batch_size=50)
    for i in range(200):
        writer.submit_fn(functools.partial(process_capture, raw(i)))
    writer.close()
    assert writer.report()["failed"] == 0
    assert store.query_one("SELECT COUNT(*) AS n FROM captures")["n"] == 200  # type: ignore[index]
    assert store.query_one("SELECT COUNT(*) AS n FROM blobs")["n"] == 201  # type: ignore[index]
    data = (tmp_path / "db.sqlite").read_bytes() + (tmp_path / "db.sqlite-wal").read_bytes()
    assert b"mail.example" not in data and b"sk-should-never" not in data


def test_redaction_switched_off_still_drops_secret_fields() -> None:
    rows = process_capture(raw(2, redact=False))
    cap = rows[-1][1]
    assert orjson.loads(cap["redactors"]) == []
    assert "x2@mail.example" in cap["output"]
    assert orjson.loads(cap["params"])["api_key"] == "[SECRET]"


def test_content_parts_tool_calls_and_missing_fields() -> None:
    request = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "card 4111 1111 1111 1111"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"e":"a@b.io"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "IBAN GB82WEST12345698765432"},
        ]
    }
    rows = process_capture(raw(3, request=request, output=None, status=502, finish_reason=None))
    blobs = [orjson.loads(r["data"]) for t, r, _ in rows if t == "blobs"]
    assert blobs[0]["content"][0]["text"] == "card [CARD]"
    assert blobs[1]["tool_calls"][0]["function"]["arguments"] == '{"e":"[EMAIL]"}'
    assert blobs[2]["content"] == "IBAN [IBAN]"
    cap = rows[-1][1]
    assert cap["output"] is None and cap["output_hash"] is None and cap["status"] == 502
    assert process_capture(raw(4, request={"input": "a@b.io"}))[-1][1]["params"] == '{"input":"[EMAIL]"}'


def test_unknown_redactor_fails_closed() -> None:
    with pytest.raises(ConfigError, match="unknown redactor"):
        process_capture(raw(5, redactors=("email", "typo")))


def test_terms_profiles_shipped_and_overridable() -> None:
    profiles = load_profiles(None)
    expected = {
        "openai",
        "azure-openai",
        "anthropic",
        "google-gemini",
        "self-hosted",
        "in-house",
        "open-weights:apache-2.0",
        "open-weights:mit",
        "open-weights:llama",
    }
    assert expected <= set(profiles)
    for p in profiles.values():
        assert p.category in {"any", "internal", "none"} and p.summary and p.clause
    for name in ("openai", "anthropic", "google-gemini", "open-weights:llama"):
        assert profiles[name].source.startswith("https://") and profiles[name].date
    assert profiles["openai"].category == "internal" and "compete" in profiles["openai"].clause
    assert profiles["anthropic"].category == "none"
    assert not profiles["openai"].allows("train") and profiles["openai"].allows("train", allow_internal=True)
    assert not profiles["anthropic"].allows("train", allow_internal=True) and profiles["anthropic"].allows("eval")

    cfg = parse_config(
        {
            "terms": {
                "anthropic": {"category": "any", "summary": "we hold written approval"},
                "acme-llm": {"category": "internal", "summary": "vendor contract 7", "clause": "s. 4"},
            }
        },
        Path("."),
    )
    profiles = load_profiles(cfg)
    assert profiles["anthropic"].category == "any" and profiles["anthropic"].origin == "config"
    assert profiles["acme-llm"].clause == "s. 4"
    unknown = resolve(profiles, "mystery-vendor")
    assert unknown.category == "none" and "mystery-vendor" in unknown.summary and not unknown.allows("train")


@pytest.mark.parametrize(
    ("provider", "terms"),
    [
        ({"kind": "openai", "base_url": "http://127.0.0.1:8000/v1"}, "undeclared"),  # a local server or a proxy
        ({"kind": "openai", "base_url": "http://localhost:9/v1"}, "undeclared"),
        ({"kind": "openai", "base_url": "https://api.openai.com/v1"}, "openai"),
        ({"kind": "openai", "base_url": "https://API.OpenAI.com./v1"}, "openai"),
        ({"kind": "openai", "base_url": "https://api.openai.com.evil.example/v1"}, "undeclared"),
        ({"kind": "azure", "base_url": "https://gw.internal.example"}, "azure-openai"),
        ({"kind": "openai", "base_url": "https://acme.openai.azure.com/openai/v1"}, "azure-openai"),
        ({"kind": "openai", "base_url": "https://api.anthropic.com/v1"}, "anthropic"),
        ({"kind": "openai", "base_url": "https://generativelanguage.googleapis.com/v1beta/openai"}, "google-gemini"),
        ({"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "terms": "self-hosted"}, "self-hosted"),
        ({"kind": "azure", "base_url": "https://x.openai.azure.com", "terms": "acme-contract"}, "acme-contract"),
    ],
)
def test_provider_without_terms_is_strict(provider: dict[str, str], terms: str) -> None:
    """No `terms` key never means 'trainable': the API host's profile, Azure's for kind azure, else undeclared."""
    cfg = parse_config({"providers": {"p": provider}}, Path("."))
    assert cfg.providers["p"].terms == terms
    profile = resolve(load_profiles(cfg), cfg.providers["p"].terms)
    if "terms" not in provider:
        assert profile.category in {"internal", "none"} and not profile.allows("train")


def test_undeclared_profile_and_own_terms_on_a_commercial_host() -> None:
    undeclared = load_profiles()["undeclared"]
    assert undeclared.category == "none" and "declares no `terms`" in " ".join(undeclared.summary.split())
    for url, implied in (("https://api.openai.com/v1", "openai"), ("https://a.openai.azure.com", "azure-openai")):
        for own in ("self-hosted", "in-house"):
            with pytest.raises(ConfigError, match=f"set terms = '{implied}'"):
                parse_config({"providers": {"p": {"kind": "openai", "base_url": url, "terms": own}}}, Path("."))


TOOLS_SECRETS = {
    "password": "S3cr3t-Passw0rd-99",
    "api_key": "Zx81kq0PqWabc123XYZ",
    "pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----",
    "contact": "mail bob.jones@example.com",
}


def _tool_call_outputs() -> list[str]:
    """The captured `output` of a tool-call answer, as the gateway builds it for plain and streamed answers."""
    arguments = orjson.dumps(TOOLS_SECRETS).decode()
    call = {"id": "call_1", "type": "function", "function": {"name": "login", "arguments": arguments}}
    plain, _ = output_of({"choices": [{"message": {"role": "assistant", "tool_calls": [call]}}]})
    acc = StreamAccumulator(client_wants_usage=False)
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "login", "arguments": ""}}
    for delta in (first, {"index": 0, "function": {"arguments": arguments[:40]}}):
        acc.feed(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [delta]}}]}) + b"\n\n")
    rest = {"index": 0, "function": {"arguments": arguments[40:]}}
    done = {"choices": [{"index": 0, "delta": {"tool_calls": [rest]}, "finish_reason": "tool_calls"}]}
    acc.feed(b"data: " + orjson.dumps(done) + b"\n\n")
    streamed = acc.output()
    assert plain is not None and streamed is not None
    return [plain, streamed]


@pytest.mark.parametrize("which", ["plain", "streamed"])
def test_tool_call_outputs_are_redacted_like_request_tool_calls(which: str) -> None:
    output = _tool_call_outputs()[0 if which == "plain" else 1]
    cap = process_capture(raw(6, output=output, finish_reason="tool_calls"))[-1][1]
    for secret in ("S3cr3t-Passw0rd-99", "Zx81kq0PqWabc123XYZ", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "bob.jones"):
        assert secret not in cap["output"]
    calls = orjson.loads(cap["output"])
    assert calls[0]["id"] == "call_1" and calls[0]["function"]["name"] == "login"
    args = orjson.loads(calls[0]["function"]["arguments"])
    assert args == {"password": "[SECRET]", "api_key": "[SECRET]", "pem": "[SECRET]", "contact": "mail [EMAIL]"}
    # exactly what the same tool call gets when it comes back in a request's messages
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    request = {"messages": [{"role": "assistant", "content": None, "tool_calls": orjson.loads(output)}]}
    blob = process_capture(raw(7, request=request, output=None))[0][1]
    assert orjson.loads(blob["data"]) == message
    assert orjson.loads(cap["redactions"])["secrets"] == 3 + 1  # + the api_key field of raw()'s request


def test_data_urls_and_dict_keys_cannot_carry_personal_data_past_redaction() -> None:
    text = "data:text/plain;base64, card 4111 1111 1111 1111, mail bob.jones@example.com, key sk-proj-AbCdEfGh12345678"
    png = (  # a 1x1 PNG
        "data:image/png;base64,"
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
    )
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": png}}]
    request = {"metadata": {"alice.smith@example.com": "vip"}, "messages": [{"role": "user", "content": content}]}
    rows = process_capture(raw(8, request=request))
    stored = "".join(str(r) for _, r, _ in rows)
    for leaked in ("4111 1111", "bob.jones", "sk-proj-AbCd", "alice.smith"):
        assert leaked not in stored
    assert png in stored  # a genuine image is kept as sent
    assert orjson.loads(rows[-1][1]["params"])["metadata"] == {"[EMAIL]": "vip"}
