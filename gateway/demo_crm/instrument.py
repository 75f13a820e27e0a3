"""The CRM's record of what reached it: a middleware that writes it, and /__crm/ to read it.

/__crm/ is for tests talking to the CRM's own port. A request carrying forwarding
headers came through a proxy (the gateway forwards everything it allows), so
/__crm/ answers it 404: the record is never published through the gateway.
"""

from __future__ import annotations

import contextlib

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.demo_crm.record import HEADERS_OF_INTEREST, CRMLog
from gateway.demo_crm.sessions import current_user

INSTRUMENT_PREFIX = "/__crm/"
_PROXY_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


def _proxied(request: web.Request) -> bool:
    return any(name in request.headers for name in _PROXY_HEADERS)


def _headers_of_interest(request: web.Request) -> list[tuple[str, str]]:
    pairs = ((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
    return [(k, v) for k, v in pairs if k.lower().replace("_", "-") in HEADERS_OF_INTEREST]


def _cookie_names(request: web.Request) -> list[str]:
    names = []
    for header in request.headers.getall(hdrs.COOKIE, []):
        for part in header.split(";"):
            name = part.split("=", 1)[0].strip()
            if name:
                names.append(name)
    return names


async def _drain(request: web.Request) -> None:
    """Read what the handler left of the body, so the record holds its full length."""
    with contextlib.suppress(Exception):
        while await request.content.readany():
            pass


@web.middleware
async def record_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith(INSTRUMENT_PREFIX) and not _proxied(request):
        return await handler(request)  # tests reading the record are not part of it
    record = request.app[CRMLog]
    seq = record.request_started(
        method=request.method,
        path=request.raw_path,
        query=request.rel_url.raw_query_string,
        headers=_headers_of_interest(request),
        cookies=_cookie_names(request),
        user=current_user(request),
    )
    status = 500
    upgraded = False
    try:
        response = await handler(request)
        status = response.status
        upgraded = isinstance(response, web.WebSocketResponse)
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if not upgraded:
            await _drain(request)
        record.request_finished(seq, status=status, body_length=request.content.total_bytes)


def _local_only(request: web.Request) -> None:
    if _proxied(request):
        raise web.HTTPNotFound()


async def list_requests(request: web.Request) -> web.Response:
    """Every recorded request, oldest first; ``?since=<seq>`` keeps only newer ones."""
    _local_only(request)
    try:
        since = int(request.query.get("since", "0"))
    except ValueError:
        raise web.HTTPBadRequest(text="since: expected an integer") from None
    entries = [r.to_json() for r in request.app[CRMLog].requests if r.seq > since]
    return web.json_response(entries)


async def list_logins(request: web.Request) -> web.Response:
    _local_only(request)
    return web.json_response([a.to_json() for a in request.app[CRMLog].logins])


async def list_actions(request: web.Request) -> web.Response:
    _local_only(request)
    return web.json_response([a.to_json() for a in request.app[CRMLog].actions])


async def reset(request: web.Request) -> web.Response:
    _local_only(request)
    request.app[CRMLog].reset()
    return web.json_response({"ok": True})


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get(INSTRUMENT_PREFIX + "requests", list_requests)
    router.add_get(INSTRUMENT_PREFIX + "logins", list_logins)
    router.add_get(INSTRUMENT_PREFIX + "actions", list_actions)
    router.add_post(INSTRUMENT_PREFIX + "reset", reset)
