"""One error hierarchy. Every class knows its HTTP status and its OpenAI error body.

Foreign exceptions are translated into these at the boundary, once.
"""

from __future__ import annotations

from typing import Any

import orjson


class InsourceError(Exception):
    """Base error: an OpenAI-style error with a status."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body())


class ConfigError(InsourceError):
    """The configuration file is invalid. Not an HTTP error; the CLI prints it."""

    type = "config_error"


class BadRequest(InsourceError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(InsourceError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(InsourceError):
    status = 403
    type = "permission_error"


class NotFound(InsourceError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(InsourceError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class RateLimited(InsourceError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(InsourceError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"

    @classmethod
    def of(cls, scope: str, limit: float) -> BudgetExceeded:
        """The refusal for the budget `scope` ("key:ID" or "tenant:NAME"), naming which one is exhausted."""
        kind, _, name = scope.partition(":")
        who = f"key {name}" if kind == "key" else f"tenant '{name}'"
        usd = f"{limit:.6f}".rstrip("0").rstrip(".")
        return cls(
            f"Budget exhausted: the monthly budget of {who} (${usd}) is spent, "
            "or this request's estimated cost would exceed it.",
            param=kind,
        )


class UpstreamError(InsourceError):
    """An upstream failed. `relay` carries an upstream body that is safe to relay (client-caused 4xx)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str | None = "upstream_error",
        retryable: bool = True,
        relay: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, headers=headers)
        self.retryable = retryable
        self.relay = relay

    def body_bytes(self) -> bytes:
        return self.relay if self.relay is not None else super().body_bytes()


class UpstreamTimeout(UpstreamError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=504, code="upstream_timeout", retryable=True)


class ServiceUnavailable(InsourceError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class NotReady(InsourceError):
    """A CLI-level failure with a clear message (bad input to a command)."""

    status = 400
    type = "invalid_request_error"
