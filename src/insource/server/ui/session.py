"""Dashboard sessions: a signed, expiring cookie (itsdangerous, keyed by the server secret), one-time login
tokens for `insource ui`, and the CSRF checks every POST passes (same origin, and the session's token)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import urllib.parse
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request

COOKIE = "insource_ui"
MAX_AGE_S = 8 * 3600


class Sessions:
    """Issues and reads session cookies. A cookie is bound to the admin key it was opened with (rotating the
    key ends every session) and, for `insource ui`, to the run that issued it (`epoch`)."""

    def __init__(self, secret: bytes, admin_key: str | None, epoch: str = "", max_age_s: int = MAX_AGE_S) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="insource-ui-session")
        self._admin_key = admin_key
        self._binding = hmac.new(secret, f"{epoch}\0{admin_key or ''}".encode(), hashlib.sha256).hexdigest()[:32]
        self.max_age_s = max_age_s
        self._tokens: set[str] = set()
        self._lock = threading.Lock()

    def open(self) -> str:
        """A new session's cookie value."""
        return self._serializer.dumps({"b": self._binding, "csrf": secrets.token_urlsafe(24)})

    def read(self, cookie: str | None) -> dict[str, Any] | None:
        """The session in a cookie, or None when absent, forged, expired or bound to another key."""
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:  # SignatureExpired is a BadSignature
            return None
        if not isinstance(data, dict) or not hmac.compare_digest(str(data.get("b", "")), self._binding):
            return None
        return data

    def key_matches(self, presented: str) -> bool:
        if not self._admin_key or not presented:
            return False
        return hmac.compare_digest(presented.encode(), self._admin_key.encode())

    @property
    def has_key(self) -> bool:
        return bool(self._admin_key)

    def new_token(self) -> str:
        """A login token that works once (`insource ui` prints it in its URL)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens.add(token)
        return token

    def redeem(self, token: str) -> bool:
        with self._lock:
            for known in list(self._tokens):
                if hmac.compare_digest(known.encode(), token.encode()):
                    self._tokens.discard(known)
                    return True
        return False


def same_origin(request: Request) -> bool:
    """A POST from this site: its Origin (else Referer) names this host. Browsers send Origin on every POST;
    a request with neither (a script, curl) is not a cross-site browser request."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    if source == "null":
        return False
    parts = urllib.parse.urlsplit(source)
    host = request.headers.get("host", "")
    return bool(parts.netloc) and hmac.compare_digest(parts.netloc.lower(), host.lower())


def csrf_ok(session: dict[str, Any], presented: object) -> bool:
    expected = str(session.get("csrf", ""))
    return isinstance(presented, str) and bool(expected) and hmac.compare_digest(presented, expected)
