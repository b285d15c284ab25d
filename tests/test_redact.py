"""Redactors: what they replace, what they must leave alone, and the registry."""

from __future__ import annotations

import time

import pytest

from insource.capture.redact import (
    available,
    check_redactors,
    get_redactors,
    iban_ok,
    luhn_ok,
    redact_text,
    redact_value,
    register,
)
from insource.errors import ConfigError

ALL = get_redactors(["secrets", "email", "phone", "card", "iban"])


def red(text: str, names: tuple[str, ...] | None = None) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    redactors = ALL if names is None else get_redactors(names)
    return redact_text(text, redactors, counts), counts


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t",
        "sk-ant-api03-abcdefghijklmnop_qrstuv",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_0123456789abcdefghijABCDEFGHIJ012345",
        "xoxb-123456789012-abcdefghij",
        "AIzaSyA1234567890abcdefghijklmnopqrstuv",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ],
)
def test_known_secret_formats(secret: str) -> None:
    out, counts = red(f"please use {secret} for the call")
    assert secret not in out and "[SECRET]" in out and counts == {"secrets": 1}


def test_bearer_keyword_values_and_private_keys() -> None:
    out, counts = red("Authorization: Bearer abcdefghijklmnop1234567890")
    assert out == "Authorization: [SECRET]" and counts == {"secrets": 1}
    out, _ = red('config: api_key="Zx81kk29aPq77LmNN" and token=8f14e45fceea167a5a36dedd4bea2543')
    assert "Zx81kk29aPq77LmNN" not in out and "8f14e45f" not in out and out.count("[SECRET]") == 2
    out, _ = red("password: hunter2 and pwd=abcd")
    assert out == "password: [SECRET] and pwd=[SECRET]"
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    out, _ = red(f"here {key} done")
    assert out == "here [SECRET] done"


@pytest.mark.parametrize(
    "text",
    [
        "My token is not working and I forgot my password yesterday",
        "the keyboard is broken; my monkey is fine",
        "passcode_forgotten\ndeclined_cash_withdrawal",
        "my secret is that I love cake",
        "the task-abcdefghijklmnopqrstuvwxyz is done",
    ],
)
def test_secrets_leave_ordinary_text_alone(text: str) -> None:
    assert red(text) == (text, {})


def test_email_phone() -> None:
    out, counts = red("mail john.doe+x@example.co.uk or call +44 20 7946 0958, (555) 123-4567, 555-123-4567")
    assert out == "mail [EMAIL] or call [PHONE], [PHONE], [PHONE]"
    assert counts == {"email": 1, "phone": 3}
    out, _ = red("UK landline 020 7946 0958 please")
    assert out == "UK landline [PHONE] please"


def test_cards_need_luhn_and_ibans_need_mod97() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")
    out, counts = red("cards 4111 1111 1111 1111, 4111-1111-1111-1112 and 5500005555555559")
    assert out == "cards [CARD], 4111-1111-1111-1112 and [CARD]" and counts == {"card": 2}
    out, counts = red("IBAN DE89 3704 0044 0532 0130 00 now, GB82WEST12345698765432, not DE89370400440532013001")
    assert out == "IBAN [IBAN] now, [IBAN], not DE89370400440532013001" and counts == {"iban": 2}


@pytest.mark.parametrize(
    "text",
    [
        "I paid £1,000,000 on 2024-01-15 and 12/03/2024",
        "order 123456, card ending 1234, top up 50.00 twice",
        "Why is my transfer of 100000 still pending after 3 days? Ref 20240115",
        "version 1.2.3.4 build 20240115123",
        "I was charged 1 234 567 89 in total",
    ],
)
def test_numbers_that_are_not_personal_data(text: str) -> None:
    assert red(text) == (text, {})


def test_only_selected_redactors_run() -> None:
    text = "mail a@b.io card 4111 1111 1111 1111"
    out, counts = red(text, ("email",))
    assert out == "mail [EMAIL] card 4111 1111 1111 1111" and counts == {"email": 1}


def test_redact_value_walks_parts_and_tool_calls_and_drops_secret_fields() -> None:
    message = {
        "role": "assistant",
        "content": [{"type": "text", "text": "write to a@b.io"}, {"type": "image_url", "image_url": {"url": "x"}}],
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "send", "arguments": '{"to": "c@d.io"}'}}
        ],
        "api_key": "plain-value",
    }
    counts: dict[str, int] = {}
    out = redact_value(message, ALL, counts)
    assert out["content"][0]["text"] == "write to [EMAIL]"
    assert out["tool_calls"][0]["function"]["arguments"] == '{"to": "[EMAIL]"}'
    assert out["tool_calls"][0]["id"] == "call_1" and out["api_key"] == "[SECRET]"
    assert counts == {"email": 2, "secrets": 1}
    assert message["api_key"] == "plain-value"  # the input is not mutated


def test_registry_is_pluggable_and_strict() -> None:
    class Shout:
        name = "test-shout"

        def redact(self, text: str) -> tuple[str, int]:
            n = text.count("SECRETWORD")
            return text.replace("SECRETWORD", "[WORD]"), n

    register(Shout())
    assert "test-shout" in available()
    out, counts = red("say SECRETWORD a@b.io", ("email", "test-shout"))
    assert out == "say [WORD] [EMAIL]" and counts == {"email": 1, "test-shout": 1}
    with pytest.raises(ConfigError, match="unknown redactor"):
        check_redactors(["email", "nope"])
    with pytest.raises(TypeError):
        register(object())  # type: ignore[arg-type]


def test_long_repeated_strings_give_the_same_counts_each_time() -> None:
    text = "system prompt: reach us at help@bank.example " + "x" * 300
    first, second = red(text), red(text)
    assert first == second and first[1] == {"email": 1}


@pytest.mark.parametrize(
    "text",
    [
        "a" * 100_000 + " b@c.io",
        "x@" + "a" * 100_000,
        "key=" * 25_000,
        "eyJ" * 30_000,
        "-----BEGIN RSA PRIVATE KEY-----" * 3_000,
        "1" * 100_000,
        "AB12" * 25_000,
        "token is " * 10_000,
    ],
    ids=["local-part", "domain", "key=", "jwt", "pem", "digits", "iban-ish", "token-is"],
)
def test_long_adversarial_inputs_stay_linear(text: str) -> None:
    """The writer thread must not stall on crafted input (quadratic regex backtracking)."""
    start = time.perf_counter()
    redact_text(text, ALL, {})
    assert time.perf_counter() - start < 2.0


def test_pem_with_headers_and_jwt_are_redacted_whole() -> None:
    pem = (
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,AB12\n\n"
        "MIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    )
    assert red(f"x {pem} y") == ("x [SECRET] y", {"secrets": 1})
