"""The one error mapping of every HTTP path: the raw-ASGI OpenAI endpoints (`openai_endpoints.py`) and the
Starlette routes (`app.py`) both answer an exception through `error_response`.

insource's own errors (`errors.py`) carry their status and OpenAI error body; Starlette's 404/405 become the
same `invalid_request_error` bodies; anything else is a bug: logged with its traceback, answered with an
OpenAI-shaped 500 that says nothing more.
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException

from insource.errors import InsourceError, NotFound
from insource.server.responses import RawJSON

log = logging.getLogger("insource.server")
INTERNAL_MESSAGE = "Internal error in insource; it has been logged."


def client_error(exc: Exception, method: str, path: str, request_id: str | None = None) -> InsourceError:
    """The error the client sees for `exc`."""
    if isinstance(exc, InsourceError):
        return exc
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            return NotFound(f"Method {method} is not allowed on {path}.", status=405)
        return NotFound(f"Unknown path {path}.", code="unknown_url")
    log.error("unexpected error on %s (request %s): %s", path, request_id, type(exc).__name__, exc_info=exc)
    return InsourceError(INTERNAL_MESSAGE, code="internal_error")


def error_response(
    exc: Exception, method: str, path: str, request_id: str | None = None, headers: dict[str, str] | None = None
) -> RawJSON:
    """The JSON response for `exc`: `headers`, then the error's own (e.g. Retry-After), then X-Request-Id."""
    err = client_error(exc, method, path, request_id)
    out = {**(headers or {}), **err.headers} if err is exc else {}
    if request_id is not None:
        out["X-Request-Id"] = request_id
    return RawJSON(err.body_bytes(), err.status, out)
