"""Tools for attacking the gateway: raw HTTP over a socket, logins, and the CRM's routing as an oracle.

aiohttp's client normalises URLs and headers before sending them, which is exactly
what an attacker does not do, so the exotic requests here are written byte by byte
to a plain asyncio socket bound to a chosen loopback address (the "place").

The ground truth is the demo CRM's own record of what reached it. "Did a blocked
route get through?" is answered by the CRM's router itself: each recorded request
target is resolved by a fresh demo CRM application, the way the CRM resolved it,
and the handler it names is compared with the handlers behind the blocked
functions.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from yarl import URL

from gateway.demo_crm import api, pages
from gateway.demo_crm.app import create_app
from tests.e2e.harness import HOME, OFFICE, Stack

MOBILE_UA = "AcmeCRM-Mobile/5.2 (Android 14)"
CRM_COOKIE = "crm_session"
GATEWAY_COOKIE = "crmgw_session"

# The demo CRM's handlers behind each function the harness policy guards.
BLOCKED_HANDLERS: dict[str, frozenset[Callable[..., Any]]] = {
    "billing": frozenset({pages.billing, pages.billing_any, pages.invoice}),
    "export": frozenset({pages.contacts_export, pages.report_csv, api.contacts_export}),
    "clock-in": frozenset({pages.clock_in, api.clock_in}),
}

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


# -- raw HTTP ---------------------------------------------------------------------------------------
def raw_request(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    *,
    host: str = "crm.example",
    content_length: bool = True,
    close: bool = True,
) -> bytes:
    """One HTTP/1.1 request, bytes exactly as given (latin-1): no normalisation of any part."""
    lines = [f"{method} {target} HTTP/1.1"]
    if host:
        lines.append(f"Host: {host}")
    lines.extend(f"{name}: {value}" for name, value in headers)
    if content_length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def send_raw(port: int, data: bytes, *, source: str = OFFICE, timeout: float = 2.0) -> bytes:
    """Write ``data`` from ``source`` and read until the gateway closes (or goes quiet for ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    out = bytearray()
    try:
        writer.write(data)
        await writer.drain()
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout)
            except TimeoutError:
                break
            if not chunk:
                break
            out.extend(chunk)
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    return bytes(out)


def statuses(response: bytes) -> list[int]:
    """The status codes of every response in a raw byte stream, in order."""
    return [int(code) for code in _STATUS_LINE.findall(response)]


def status_of(response: bytes) -> int:
    found = statuses(response)
    assert found, f"no HTTP response at all: {response[:200]!r}"
    return found[0]


# -- identity -------------------------------------------------------------------------------------------
def cookie_header(client: aiohttp.ClientSession, s: Stack) -> str:
    cookies = client.cookie_jar.filter_cookies(URL(s.url("/")))
    return "; ".join(f"{name}={morsel.value}" for name, morsel in cookies.items())


def cookies_of(client: aiohttp.ClientSession, s: Stack) -> dict[str, str]:
    return {name: morsel.value for name, morsel in client.cookie_jar.filter_cookies(URL(s.url("/"))).items()}


async def browser_login(s: Stack, user: str, *, source: str = OFFICE, password: str = "demo") -> aiohttp.ClientSession:
    """A browser logged in through the gateway (form POST); its jar holds both cookies."""
    client = s.client(source)
    async with client.post(s.url("/login"), data={"username": user, "password": password},
                           allow_redirects=False) as resp:
        await resp.read()
        assert resp.status in (302, 303), f"login of {user} from {source} answered {resp.status}"
    return client


async def app_login(s: Stack, user: str, *, source: str = HOME) -> aiohttp.ClientSession:
    """The mobile app logged in through the gateway (JSON POST with the app's User-Agent)."""
    client = s.client(source, headers={"User-Agent": MOBILE_UA})
    async with client.post(s.url("/login"), json={"username": user, "password": "demo"},
                           allow_redirects=False) as resp:
        await resp.read()
        assert resp.status in (302, 303), f"app login of {user} from {source} answered {resp.status}"
    return client


async def direct_crm_cookie(s: Stack, user: str = "jim") -> str:
    """A CRM session cookie obtained around the gateway (straight from the CRM's port)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as direct:
        async with direct.post(s.crm_url("/login"), data={"username": user, "password": "demo"},
                               allow_redirects=False) as resp:
            return resp.cookies[CRM_COOKIE].value


def set_cookie_names(headers: Iterable[str]) -> set[str]:
    return {header.split("=", 1)[0].strip() for header in headers}


def csrf_of(page: str) -> str:
    return page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


# -- the CRM as oracle --------------------------------------------------------------------------------
_ORACLE_APP: web.Application | None = None


def _oracle_app() -> web.Application:
    global _ORACLE_APP
    if _ORACLE_APP is None:
        _ORACLE_APP = create_app()
    return _ORACLE_APP


async def crm_handler(method: str, target: str, *, fold_case: bool = False,
                      decode_twice: bool = False) -> Callable[..., Any] | None:
    """The demo CRM handler the CRM routes ``method target`` to (None: no route, 404 or 405).

    The URL is built the way aiohttp's server parser builds it (already encoded),
    so the router sees what the real CRM saw. ``fold_case`` resolves the lower-cased
    path: the same CRM with a router that ignores case. ``decode_twice`` resolves
    the path percent-decoded once more: a back end that decodes twice.
    """
    path, _, query = target.partition("?")
    if fold_case:
        path = path.lower()
    if decode_twice:
        path = unquote(path)
    request = make_mocked_request(method, "/", app=_oracle_app())
    request = request.clone(rel_url=URL.build(path=path, query_string=query, encoded=True))
    match = await _oracle_app().router.resolve(request)
    if match.http_exception is not None:
        return None
    handler: Callable[..., Any] = match.handler
    return handler


async def reached_blocked(s: Stack, function: str, *, fold_case: bool = False,
                          decode_twice: bool = False) -> list[dict[str, Any]]:
    """Requests in the CRM's record that the CRM routed (or would route) to the function's handlers."""
    blocked = BLOCKED_HANDLERS[function]
    hits = []
    for entry in await s.crm_requests():
        handler = await crm_handler(entry["method"], entry["path"], fold_case=fold_case, decode_twice=decode_twice)
        if handler in blocked:
            hits.append(entry)
    return hits


async def crm_actions(s: Stack) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as direct, direct.get(s.crm_url("/__crm/actions")) as resp:
        data: list[dict[str, Any]] = await resp.json()
        return data


def canonical_header(name: str) -> str:
    """How CGI, WSGI and PHP back ends see a header name: case-folded, '_' and '-' alike."""
    return name.lower().replace("_", "-")


def recorded_header(entry: dict[str, Any], name: str) -> list[str]:
    """Every value the CRM received for a header, in any spelling."""
    wanted = canonical_header(name)
    return [value for header, value in entry["headers"] if canonical_header(header) == wanted]


def canonical_cookie(name: str) -> str:
    """How PHP reads a cookie name: percent-decoded, 'a[...]' as 'a', other ' ', '.' and '[' as '_'."""
    decoded = unquote(name.strip())
    bracket = decoded.find("[")
    if bracket > 0 and "]" in decoded[bracket:]:
        decoded = decoded[:bracket]
    return decoded.replace(" ", "_").replace(".", "_").replace("[", "_")


def form(**fields: str) -> bytes:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in fields.items()).encode()
