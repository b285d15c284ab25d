"""Who is calling: the virtual key presented with a request."""

from __future__ import annotations

from insource.errors import Unauthorized
from insource.service.keys import KeyInfo
from insource.service.worker_state import WorkerState


def resolve_key(gw: WorkerState, authorization: str | None, api_key: str | None) -> KeyInfo:
    """The key presented as `Authorization: Bearer KEY` (or Azure-style `api-key`), or 401."""
    if authorization and authorization[:7].lower() == "bearer ":
        presented = authorization[7:].strip()
    else:
        presented = (api_key or "").strip()
    if not presented:
        raise Unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer KEY'.")
    info = gw.keys.lookup(presented)
    if info is None:
        raise Unauthorized("Incorrect API key provided, or the key was revoked.")
    return info
