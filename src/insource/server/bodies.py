"""Request bodies read by the Starlette handlers, bounded: a body over the limit is a 413, never read whole."""

from __future__ import annotations

from starlette.requests import Request

from insource.errors import PayloadTooLarge


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body too large: the limit is {limit / (1024 * 1024):g} MB.")


async def read_limited(request: Request, limit: int) -> bytes:
    """The whole body, or 413 as soon as it (or its declared Content-Length) exceeds `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)
