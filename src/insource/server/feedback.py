"""`POST /v1/feedback`: a thin handler over `service/feedback.py`."""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.routing import Route

from insource.server.auth import resolve_key
from insource.server.bodies import read_limited
from insource.server.responses import RawJSON
from insource.service.feedback import submit_feedback
from insource.service.worker_state import WorkerState


async def feedback(request: Request) -> RawJSON:
    gw: WorkerState = request.app.state.gateway
    key = resolve_key(gw, request.headers.get("authorization"), request.headers.get("api-key"))
    raw = await read_limited(request, gw.max_body)
    return RawJSON(orjson.dumps(await submit_feedback(gw, key, raw)))


def routes() -> list[Route]:
    return [Route("/v1/feedback", feedback, methods=["POST"])]
