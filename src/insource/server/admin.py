"""The admin API (`/admin/...`): keys, spend and routes, authenticated by the admin key from config."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from insource.config import resolve_secret
from insource.errors import BadRequest, Forbidden, Unauthorized
from insource.server.responses import RawJSON
from insource.service import keys as keys_service
from insource.service import routes as routes_service
from insource.service import spend as spend_service


def check_admin(request: Request) -> Any:
    gw = request.app.state.gateway
    expected = resolve_secret(gw.cfg.server.admin_key)
    if not expected:
        raise Forbidden('The admin API is disabled: set [server] admin_key = "env::NAME" in the config.')
    header = request.headers.get("authorization", "")
    presented = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not presented or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise Unauthorized("Invalid admin key.")
    return gw


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body() or b"{}")
    except orjson.JSONDecodeError:
        raise BadRequest("The request body must be valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


async def keys_list(request: Request) -> RawJSON:
    gw = check_admin(request)
    return RawJSON(orjson.dumps(await asyncio.to_thread(keys_service.list_keys, gw.store)))  # sums this month's usage


async def keys_create(request: Request) -> RawJSON:
    gw = check_admin(request)
    body = await _json_body(request)
    allowed = {"tenant", "budget_usd", "rpm", "tpm", "models", "capture"}
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    if not isinstance(body.get("tenant"), str):
        raise BadRequest("'tenant' is required", param="tenant")
    created = keys_service.create_key(
        gw.store,
        gw.secret,
        body["tenant"],
        budget_usd=body.get("budget_usd"),
        rpm=body.get("rpm"),
        tpm=body.get("tpm"),
        models=body.get("models"),
        capture=body.get("capture"),
    )
    return RawJSON(orjson.dumps(created), 201)


async def keys_revoke(request: Request) -> RawJSON:
    gw = check_admin(request)
    keys_service.revoke_key(gw.store, request.path_params["key_id"])
    gw.keys.refresh()
    return RawJSON(orjson.dumps({"id": request.path_params["key_id"], "revoked": True}))


async def spend(request: Request) -> RawJSON:
    gw = check_admin(request)
    await asyncio.to_thread(gw.writer.flush, 2.0)
    params = request.query_params
    rows = await asyncio.to_thread(  # off the event loop: a report over many days must not stall the gateway
        spend_service.spend, gw.store, params.get("by", "tenant"), params.get("since"), params.get("until")
    )
    return RawJSON(orjson.dumps(rows))


async def route_off(request: Request) -> RawJSON:
    """Send a task back to the teacher: at once on this worker, on every other within a second."""
    gw = check_admin(request)
    body = await _json_body(request)
    unknown = set(body) - {"reason"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest("'reason' must be a string", param="reason")
    task = request.path_params["task"]
    row = await asyncio.to_thread(routes_service.route_off, gw.cfg, gw.store, task, reason, "admin")
    gw.router.turn_off(task)
    return RawJSON(orjson.dumps(row))


def routes() -> list[Route]:
    return [
        Route("/admin/keys", keys_list, methods=["GET"]),
        Route("/admin/keys", keys_create, methods=["POST"]),
        Route("/admin/keys/{key_id}", keys_revoke, methods=["DELETE"]),
        Route("/admin/spend", spend, methods=["GET"]),
        Route("/admin/routes/{task:path}/off", route_off, methods=["POST"]),
    ]
