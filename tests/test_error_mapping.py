"""One error mapping for every HTTP path (`server/errors.py:error_response`): the raw-ASGI OpenAI endpoints and
the Starlette routes answer the same exception with the same status, body and headers."""

from __future__ import annotations

import logging

import orjson
import pytest
from starlette.exceptions import HTTPException

from insource.errors import RateLimited
from insource.server import app as starlette_app
from insource.server import openai_endpoints
from insource.server.errors import error_response


def test_insource_errors_keep_their_status_body_and_headers() -> None:
    exc = RateLimited("slow down", headers={"Retry-After": "3"})
    resp = error_response(exc, "POST", "/v1/chat/completions", "req_1", {"X-Insource-Served-By": "insource"})
    assert resp.status == 429
    assert orjson.loads(resp.body)["error"]["message"] == "slow down"
    assert resp.headers == {"X-Insource-Served-By": "insource", "Retry-After": "3", "X-Request-Id": "req_1"}


def test_starlette_404_and_405_become_openai_errors() -> None:
    gone = error_response(HTTPException(404), "GET", "/nope")
    assert (gone.status, orjson.loads(gone.body)["error"]["code"]) == (404, "unknown_url")
    wrong = error_response(HTTPException(405), "PUT", "/v1/models")
    assert wrong.status == 405 and "Method PUT is not allowed on /v1/models." in wrong.body.decode()


def test_a_bug_is_logged_and_answered_with_a_bare_500(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="insource.server"):
        resp = error_response(RuntimeError("secret detail"), "POST", "/v1/embeddings", "req_2", {"X-A": "b"})
    assert resp.status == 500 and resp.headers == {"X-Request-Id": "req_2"}
    body = orjson.loads(resp.body)["error"]
    assert body["code"] == "internal_error" and body["type"] == "server_error" and "secret" not in resp.body.decode()
    assert "RuntimeError" in caplog.text


def test_both_http_layers_use_the_one_mapping() -> None:
    assert openai_endpoints.error_response is error_response
    assert starlette_app.error_response is error_response
