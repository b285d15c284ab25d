"""Redactors: what they replace, what they must leave alone, and the registry."""

from __future__ import annotations

import time

import orjson
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
        "isk-cYTBXDAG_UHp5raqBupAzUoNU964ABthIQgojhUR928",  # insource's own virtual keys
        "sk_live_51HxYzAbCdEfGhIjKlMnOpQr",
        "rk_live_51HxYzAbCdEfGhIjKlMnOpQr",
        "sk_test_51HxYzAbCdEfGhIjKlMnOpQr",
        "rk_test_51HxYzAbCdEfGhIjKlMnOpQr",
        "whsec_AbCdEfGhIjKlMnOpQrStUvWx1234",
        "hf_AbCdEfGhIjKlMnOpQrStUvWxYz12345678",
        "glpat-AbCdEfGh1234567890Xy",
        "gsk_AbCdEfGhIjKlMnOpQrStUvWxYz1234567890abcdefGHIJ",
        "xai-AbCdEfGhIjKlMnOpQrStUvWxYz1234567890abcdefGHIJ",
        "npm_AbCdEfGhIjKlMnOpQrStUvWxYz1234567890",
        "SK0123456789abcdef0123456789abcdef",  # Twilio
        "SG.AbCdEfGhIjKlMnOpQrStUv.AbCdEfGhIjKlMnOpQrStUvWxYz1234567890abcdefg",  # SendGrid
        "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----",  # escaped \\n
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


ADVERSARIAL = {
    "local-part": "a" * 100_000 + " b@c.io",
    "domain": "x@" + "a" * 100_000,
    "key=": "key=" * 25_000,
    "jwt": "eyJ" * 30_000,
    "pem": "-----BEGIN RSA PRIVATE KEY-----" * 3_000,
    "digits": "1" * 100_000,
    "iban-ish": "AB12" * 25_000,
    "token-is": "token is " * 10_000,
    "url-password": "://a:" + "b" * 100_000,
    "url-dense": "://:" * 25_000,
    "sendgrid": "SG." + "a" * 100_000,
    "hex": "key " + "a1" * 50_000,
    "base64": "Ab1+" * 25_000,
    "base64-39": ("Ab1/" * 10)[:39].join([" "] * 2_500),
    "isk": "isk-" * 25_000,
    "aws-pair": "AKIAIOSFODNN7EXAMPLE:" + "A" * 100_000,
    "bare-phone": "call 4155552671 " * 6_000,
    "iban-lower": "de89 " * 20_000,
    "card-dots": "4111." * 20_000,
    "escaped-password": 'password\\": \\"' * 7_000,
    "pem-escaped": "-----BEGIN PRIVATE KEY-----" + "\\n" * 50_000,
}


@pytest.mark.parametrize("text", list(ADVERSARIAL.values()), ids=list(ADVERSARIAL))
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


def test_vendor_prefixes_are_found_from_their_first_letter() -> None:
    """`isk-`/`gsk_` hold `sk` after a letter; the key is still redacted whole, the word before it is not."""
    key = "isk-cYTBXDAG_UHp5raqBupAzUoNU964ABthIQgojhUR928"
    assert red(f"Authorization header value {key}.") == ("Authorization header value [SECRET].", {"secrets": 1})
    assert red(f'{{"key":"{key}"}}')[0] == '{"key":"[SECRET]"}'
    assert red("keyXsk-proj-AbCdEfGhIjKlMnOpQrStUvWx1234567890") == ("keyX[SECRET]", {"secrets": 1})
    for word in ("disk-partition-table-for-the-main-cluster", "risk-assessment-for-the-quarter-2024", "ask_test_x"):
        assert red(f"the {word} is done") == (f"the {word} is done", {})


def test_aws_secret_access_keys() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    assert red(f"AKIAIOSFODNN7EXAMPLE {secret}") == ("[SECRET] [SECRET]", {"secrets": 2})
    assert red(f"AKIAIOSFODNN7EXAMPLE,{secret}")[0] == "[SECRET],[SECRET]"
    assert red(f"here it is: {secret} thanks") == ("here it is: [SECRET] thanks", {"secrets": 1})


@pytest.mark.parametrize(
    "text",
    [
        "commit 2fd4e1c67a2d28fced849ee1bb76e7391b93eb12 fixed it",  # SHA-1 (hex, one case)
        "see ThisIsAVeryLongCamelCaseIdentifierName12 in the code",  # words
        "path /home/User/Projects/MyApp/src/Main1/Tests/x",
        "blob iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk",  # longer base64 run
        "AbstractSingletonProxyFactoryBean2Factor is a class",
    ],
)
def test_forty_character_tokens_that_are_not_aws_secrets(text: str) -> None:
    assert red(text) == (text, {})


def test_azure_keys_near_a_keyword_and_passwords_in_urls() -> None:
    hexkey = "0123456789abcdef0123456789abcdef"
    assert red(f"Ocp-Apim-Subscription-Key: {hexkey}")[0] == "Ocp-Apim-Subscription-Key: [SECRET]"
    assert red(f"the Azure OpenAI key for westeurope: {hexkey}")[0] == "the Azure OpenAI key for westeurope: [SECRET]"
    assert red(f"request id {hexkey} failed") == (f"request id {hexkey} failed", {})  # no keyword near it
    assert red("postgresql://app:S3cr3tPassw0rd@db:5432/prod") == (
        "postgresql://app:[SECRET]@db:5432/prod",
        {"secrets": 1},
    )
    assert red("redis://:redispassw0rdXYZ@127.0.0.1:6399/0")[0] == "redis://:[SECRET]@127.0.0.1:6399/0"
    text = "see https://example.com:8080/docs and https://bob@example.com/x"
    assert red(text, ("secrets",)) == (text, {})
    text = "AccountName=x;AccountKey=AbCdEf0123456789AbCdEf0123456789AbCdEf01==;"
    assert red(text)[0] == "AccountName=x;AccountKey=[SECRET];"


def test_keyword_values_inside_escaped_json() -> None:
    """JSON inside a JSON string: quotes are `\\"`; the value goes, the escaping around it stays intact."""
    text = r"{\"password\": \"hunter2\", \"api_key\": \"Zx81kq0PqWabc123XYZ\", \"user\": \"bob\"}"
    assert red(text) == (
        r"{\"password\": \"[SECRET]\", \"api_key\": \"[SECRET]\", \"user\": \"bob\"}",
        {"secrets": 2},
    )
    assert red(r"login --password=\"S3cr3t-Passw0rd-99\" now")[0] == r"login --password=\"[SECRET]\" now"


def test_phone_formats() -> None:
    for number in ("415 555 2671", "415.555.2671", "0044 20 7946 0958", "06 12 34 56 78", "+1-415-555-2671"):
        assert red(f"call me at {number} please") == ("call me at [PHONE] please", {"phone": 1}), number
    assert red("call me at 4155552671 please") == ("call me at [PHONE] please", {"phone": 1})
    assert red("my mobile: 0612345678") == ("my mobile: [PHONE]", {"phone": 1})


@pytest.mark.parametrize(
    "text",
    [
        "order 4155552671 has not arrived",  # ten bare digits without a phone word: an order number
        "Ref 2024011512 still pending",
        "transaction 1700000000 at noon, call it a day",  # starts with 1: never a North American number
        "I paid 1 234 567 890 in total",
        "call about order 12345678901234",  # too many digits
    ],
)
def test_bare_digits_that_are_not_phone_numbers(text: str) -> None:
    assert red(text) == (text, {})


def test_ibans_any_case_or_dashes_and_dotted_cards() -> None:
    for iban in ("gb82west12345698765432", "de89 3704 0044 0532 0130 00", "DE89-3704-0044-0532-0130-00"):
        assert red(f"IBAN {iban} ok") == ("IBAN [IBAN] ok", {"iban": 1}), iban
    assert red("id de89370400440532013000x1 and ab12cdefghijklmnopqr") == (
        "id de89370400440532013000x1 and ab12cdefghijklmnopqr",
        {},
    )  # wrong length for DE; AB is no IBAN country
    assert red("card 4111.1111.1111.1111 exp") == ("card [CARD] exp", {"card": 1})
    assert red("card 4111.1111.1111.1112 exp") == ("card 4111.1111.1111.1112 exp", {})  # Luhn fails
    assert red("pi is 3.14159265358979323846") == ("pi is 3.14159265358979323846", {})


PNG = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def test_only_genuine_media_data_urls_skip_redaction() -> None:
    png = PNG
    counts: dict[str, int] = {}
    assert redact_value(png, ALL, counts) is png and counts == {}
    for text in (
        "data:text/plain;base64, card 4111 1111 1111 1111, mail bob.jones@example.com",
        "data:image/png;base64, card 4111 1111 1111 1111, mail bob.jones@example.com",  # not base64
        "data:image/png;name=x;base64,QUJD mail bob.jones@example.com",
    ):
        counts = {}
        out = redact_value(text, ALL, counts)
        assert "bob.jones" not in out and "[EMAIL]" in out and counts["email"] == 1, text


def test_dict_keys_are_redacted_and_stay_distinct() -> None:
    counts: dict[str, int] = {}
    value = {"metadata": {"alice@example.com": "vip", "bob@example.com": 1, "temperature": 0.2}}
    out = redact_value(value, ALL, counts)
    assert out == {"metadata": {"[EMAIL]": "vip", "[EMAIL]#2": 1, "temperature": 0.2}}
    assert counts == {"email": 2}
    assert redact_value({"a@b.io": 1, "[EMAIL]": 2}, ALL, {}) == {"[EMAIL]": 1, "[EMAIL]#2": 2}  # nothing lost


def test_tool_call_arguments_with_escapes_are_redacted_like_values() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    arguments = orjson.dumps({"pem": pem, "note": "line one\nmail a@b.io", "to": "c@d.io"}).decode()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    counts: dict[str, int] = {}
    out = redact_value({"tool_calls": [call]}, ALL, counts)
    args = orjson.loads(out["tool_calls"][0]["function"]["arguments"])
    assert args == {"pem": "[SECRET]", "note": "line one\nmail [EMAIL]", "to": "[EMAIL]"}
    assert counts == {"secrets": 1, "email": 2}
