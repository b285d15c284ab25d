"""Bad input and upstream failures: OpenAI-shaped errors with the right status, never a 500 or a secret."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from tests.conftest import UPSTREAM_KEY, Gateway

from insource.testing.fake_upstream import FakeUpstream

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hello"}]


def post(
    gw: Gateway,
    key: str | None,
    body: object = None,
    raw: bytes | None = None,
    path: str = CHAT,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = {"Content-Type": "application/json", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    content = raw if raw is not None else httpx.Request("POST", "/", json=body).content
    return httpx.post(gw.url + path, content=content, headers=h, timeout=30)


def assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code
    assert UPSTREAM_KEY not in resp.text and "sk-wrong" not in resp.text
    return err


def test_bad_requests(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    assert_error(post(gateway, key, raw=b"{not json"), 400)
    assert_error(post(gateway, key, raw=b"[1, 2]"), 400)
    assert assert_error(post(gateway, key, {"model": "gpt-4o-mini", "messages": "hi"}), 400)["param"] == "messages"
    assert_error(post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG, "n": "two"}), 400)
    assert_error(post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG, "stream": "yes"}), 400)
    assert_error(post(gateway, key, {"model": 42, "messages": MSG}), 404, "model_not_found")
    assert assert_error(post(gateway, key, {"messages": MSG}), 400)["param"] == "model"  # missing, as OpenAI says
    assert_error(post(gateway, key, {"model": "no-such-model", "messages": MSG}), 404, "model_not_found")
    assert_error(post(gateway, key, {"model": "text-embedding-3-small", "input": 5}, path="/v1/embeddings"), 400)
    assert fake.requests == []
    ok = post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG}, headers={"X-Insource-Task": ""})
    assert ok.status_code == 200  # an empty task header is no task, not an error


def test_auth_failures(gateway: Gateway) -> None:
    assert_error(post(gateway, None, {"model": "gpt-4o-mini", "messages": MSG}), 401, "invalid_api_key")
    assert_error(post(gateway, "isk-made-up", {"model": "gpt-4o-mini", "messages": MSG}), 401, "invalid_api_key")
    assert_error(httpx.get(gateway.url + "/v1/models"), 401)


def test_model_not_allowed_for_key(gateway: Gateway) -> None:
    key = gateway.key(models=["azure-mini"])["key"]
    assert_error(post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG}), 404, "model_not_found")


def test_revoked_key_refused_within_a_second(gateway: Gateway) -> None:
    created = gateway.key()
    assert post(gateway, created["key"], {"model": "gpt-4o-mini", "messages": MSG}).status_code == 200
    gateway.cli("keys", "revoke", created["id"])
    time.sleep(1.0)
    assert_error(post(gateway, created["key"], {"model": "gpt-4o-mini", "messages": MSG}), 401)


def test_oversized_body_413_is_metered(gateway: Gateway) -> None:
    created = gateway.key()
    big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}
    resp = post(gateway, created["key"], big)
    assert_error(resp, 413)
    assert resp.headers["x-insource-served-by"] == "insource"  # refused by the gateway itself
    embed = {"model": "text-embedding-3-small", "input": "x" * (1024 * 1024 + 10)}
    assert_error(post(gateway, created["key"], embed, path="/v1/embeddings"), 413)
    rows = gateway.usage_rows("key_id = ?", (created["id"],), wait_for=2)
    assert [(r["endpoint"], r["status"], r["cost_usd"]) for r in rows] == [("chat", 413, 0), ("embeddings", 413, 0)]


def test_rpm_limit_429(gateway: Gateway) -> None:
    key = gateway.key(rpm=2)["key"]
    codes = [post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    resp = post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG})
    assert_error(resp, 429, "rate_limit_exceeded")
    assert int(resp.headers["retry-after"]) >= 1


def test_retry_then_success_before_first_byte(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.fail_next(500, count=2)
    resp = post(gateway, key, {"model": "flaky-mini", "messages": MSG})
    assert resp.status_code == 200
    assert len(fake.requests) == 3


def test_fallback_to_next_target(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    resp = post(gateway, key, {"model": "fallback-mini", "messages": MSG})  # first target refuses connections
    assert resp.status_code == 200
    assert resp.headers["x-insource-served-by"] == "flaky:gpt-4o-mini"
    fake.fail_next(429, count=1, retry_after=7)  # a 429 falls back at once when another target exists
    resp = post(gateway, key, {"model": "fallback-mini", "messages": MSG})
    assert resp.headers["x-insource-served-by"] == "backup:gpt-4o-mini"
    assert len(fake.requests) == 3


def test_429_single_target_returned_with_retry_after(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.fail_next(429, count=1, retry_after=7)
    resp = post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG})
    assert_error(resp, 429)
    assert resp.headers["retry-after"] == "7"
    assert len(fake.requests) == 1


def test_upstream_client_error_relayed(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.fail_next(
        400,
        body={
            "error": {
                "message": "bad temperature",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": None,
            }
        },
    )
    resp = post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG})
    err = assert_error(resp, 400)
    assert err["param"] == "temperature" and err["message"] == "bad temperature"
    assert resp.headers["x-insource-served-by"] == "local:gpt-4o-mini"  # the target that answered
    assert len(fake.requests) == 1  # a client error is not retried


def test_upstream_auth_failure_is_502_without_secrets(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    err = assert_error(post(gateway, key, {"model": "badkey-mini", "messages": MSG}), 502)
    assert "credentials" in str(err["message"])
    assert "sk-wrong" not in gateway.log.read_text()


def test_upstream_auth_failure_once_is_neither_retried_nor_fallen_back(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.fail_next(401)  # "flaky" has max_retries = 2: a 5xx would be retried, our own credentials are not
    err = assert_error(post(gateway, key, {"model": "flaky-mini", "messages": MSG}), 502, "upstream_auth_failed")
    assert "credentials" in str(err["message"])
    assert len(fake.requests) == 1
    fake.fail_next(403)
    assert_error(post(gateway, key, {"model": "fallback-mini", "messages": MSG}), 502, "upstream_auth_failed")
    assert len(fake.requests) == 2  # dead (connection refused), then flaky's 403: backup is never tried


def test_relayed_upstream_error_never_echoes_the_credential(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    echo = {"message": f"bad key {UPSTREAM_KEY}", "type": "x", "param": f"Bearer {UPSTREAM_KEY}", "code": UPSTREAM_KEY}
    fake.fail_next(400, body={"error": echo})
    err = assert_error(post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG}), 400)  # checks the key is absent
    assert err["param"] == "Bearer [REDACTED]" and err["code"] == "[REDACTED]"


def test_hanging_upstream_times_out_504(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.hang = True
    started = time.monotonic()
    resp = post(gateway, key, {"model": "flaky-mini", "messages": MSG})
    fake.release()
    assert_error(resp, 504)
    assert time.monotonic() - started < 10  # ttft 1 s × (1 + 2 retries) plus backoff


def test_failures_after_first_byte_are_not_retried(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.stream_break_after = 2
    c = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="flaky-mini", messages=MSG, stream=True):  # type: ignore[arg-type]
            pass
    assert len(fake.requests) == 1
    rows = gateway.usage_rows("model='flaky-mini' AND stream=1", wait_for=1)
    assert rows[-1]["status"] != 200


def test_circuit_breaker_opens_then_half_opens(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.fail_next(503, count=5)  # 1 try + 2 retries, then 2 more: five consecutive failures
    assert post(gateway, key, {"model": "flaky-mini", "messages": MSG}).status_code == 503
    assert post(gateway, key, {"model": "flaky-mini", "messages": MSG}).status_code >= 500
    seen = len(fake.requests)
    assert seen == 5
    assert_error(post(gateway, key, {"model": "flaky-mini", "messages": MSG}), 503)
    assert len(fake.requests) == seen  # open: the upstream is not called
    time.sleep(1.1)
    assert post(gateway, key, {"model": "flaky-mini", "messages": MSG}).status_code == 200  # half-open probe


def test_circuit_breaker_probe_answered_429_does_not_wedge_it(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    fake.fail_next(503, count=5)
    for _ in range(2):
        assert post(gateway, key, {"model": "flaky-mini", "messages": MSG}).status_code >= 500
    assert_error(post(gateway, key, {"model": "flaky-mini", "messages": MSG}), 503)  # open
    time.sleep(1.1)
    fake.fail_next(429, retry_after=1)
    assert_error(post(gateway, key, {"model": "flaky-mini", "messages": MSG}), 429)  # the half-open probe
    assert post(gateway, key, {"model": "flaky-mini", "messages": MSG}).status_code == 200  # answered: closed


def test_unknown_path_and_method(gateway: Gateway) -> None:
    assert_error(httpx.get(gateway.url + "/v2/nothing"), 404)
    assert_error(httpx.get(gateway.url + CHAT), 405)


def test_upstream_redirects_are_never_followed(gateway: Gateway, fake: FakeUpstream) -> None:
    key = gateway.key()["key"]
    err = assert_error(post(gateway, key, {"model": "bounce-mini", "messages": MSG}), 502)
    assert "redirect" in str(err["message"])
    assert fake.requests == []  # the redirect target was never called


def test_tpm_limit_429(gateway: Gateway) -> None:
    # admission counts the estimate (prompt + max_tokens); finished requests count their real tokens
    key = gateway.key(tpm=140)["key"]
    body = {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 100}
    assert post(gateway, key, body).status_code == 200
    resp = post(gateway, key, body)
    assert_error(resp, 429, "rate_limit_exceeded")
    assert int(resp.headers["retry-after"]) >= 1
    assert post(gateway, key, {**body, "max_tokens": 20}).status_code == 200  # a smaller request still fits


def test_tenant_budget_from_config(gateway: Gateway) -> None:
    key = gateway.key(tenant="thrifty")["key"]  # [tenants.thrifty] budget_usd = 0.000001
    assert_error(
        post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG, "max_tokens": 50}), 429, "budget_exceeded"
    )


def test_hostile_shapes_are_400s_that_release_the_budget(gateway: Gateway, fake: FakeUpstream) -> None:
    created = gateway.key(budget_usd=0.001)
    key = created["key"]
    deep: object = "x"
    for _ in range(300):
        deep = [deep]
    err = assert_error(post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG, "tools": deep}), 400)
    assert "nested too deeply" in str(err["message"])
    for task in ("a\x00b", "line\nbreak", "\x1b[31mred"):
        body = {"model": "gpt-4o-mini", "messages": MSG, "metadata": {"task": task}}
        assert assert_error(post(gateway, key, body), 400)["param"] == "metadata.task"
    assert post(gateway, key, {"model": "gpt-4o-mini", "messages": MSG}).status_code == 200  # budget intact
    assert fake.requests and all(r.body.get("tools") is None for r in fake.requests)
    rows = gateway.usage_rows("key_id = ?", (created["id"],), wait_for=5)
    assert [r["status"] for r in rows] == [400, 400, 400, 400, 200]


def test_client_chosen_model_names_are_bounded(gateway: Gateway) -> None:
    created = gateway.key()
    long_name = "m" * 100_000
    assert_error(post(gateway, created["key"], {"model": long_name, "messages": MSG}), 404, "model_not_found")
    row = gateway.usage_rows("key_id = ?", (created["id"],), wait_for=1)[0]
    assert row["model"] == "m" * 200 and row["status"] == 404
    metrics = httpx.get(gateway.url + "/metrics", headers={"Authorization": "Bearer adm-1"}).text
    assert "mmmmmmmmmm" not in metrics and "(unknown)" in metrics  # client-chosen names are not labels


def test_no_redirect_built_from_the_host_header(gateway: Gateway) -> None:
    for path in ("/admin/keys/", "/v1/models/"):
        resp = httpx.get(gateway.url + path, headers={"Host": "evil.example"})
        assert resp.status_code in (401, 404) and "location" not in resp.headers
    health = httpx.get(gateway.url + "/healthz").json()
    assert health["status"] == "ok" and "errors" not in health["writer"]  # counts only, without a key
