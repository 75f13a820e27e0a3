"""The bundled demo CRM: every endpoint the end-to-end tests and `crm-gateway demo` rely on.

Each test talks to a real demo CRM app over a loopback socket (pytest-aiohttp's
``aiohttp_client``). Expected values are computed here independently of the code
under test (the download pattern, hashes, CSV contents).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from gateway.demo_crm import DEMO_USERS, CRMLog, CRMRecord, create_app, start
from gateway.demo_crm.data import CONTACTS

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]

SECRET = "Sup3r-s3cret-pa55"  # distinctive, so a leak into the record is easy to spot
CHUNK = 64 * 1024


@pytest.fixture
async def crm(aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(create_app())


async def log_in(client: Client, user: str = "jim", password: str = "demo") -> str:
    """Log in with the form; the client's cookie jar keeps crm_session. Returns the token."""
    resp = await client.post(
        "/login", data={"username": user, "password": password}, allow_redirects=False
    )
    assert resp.status == 302, await resp.text()
    return resp.cookies["crm_session"].value


@pytest.fixture
async def jim(crm: Client) -> Client:
    await log_in(crm, "jim")
    return crm


def record_of(client: Client) -> CRMRecord:
    return client.app[CRMLog]


def expected_download(size: int) -> bytes:
    """The documented pattern: 64 KiB chunk k is sha256(b"crm-demo-<k>") repeated, cut at size."""
    out = bytearray()
    index = 0
    while len(out) < size:
        out += hashlib.sha256(f"crm-demo-{index}".encode()).digest() * (CHUNK // 32)
        index += 1
    return bytes(out[:size])


# --- login -------------------------------------------------------------------------------


def _form(user: str, password: str) -> dict[str, Any]:
    return {"data": {"username": user, "password": password}}


def _multipart(user: str, password: str) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("username", user)
    form.add_field("password", password)
    form.add_field("next", "")
    # A FormData with only text fields is urlencoded unless forced to multipart.
    form._is_multipart = True
    return {"data": form}


def _json(user: str, password: str) -> dict[str, Any]:
    return {"json": {"username": user, "password": password}}


@pytest.mark.parametrize(
    ("body", "status", "via"),
    [(_form, 302, "form"), (_multipart, 302, "multipart"), (_json, 303, "json")],
    ids=["urlencoded form answers 302", "multipart form answers 302", "JSON (mobile app) answers 303"],
)
async def test_login_success_sets_session_cookie_and_redirects(
    crm: Client, body: Callable[[str, str], dict[str, Any]], status: int, via: str
) -> None:
    resp = await crm.post("/login", allow_redirects=False, **body("alice", "demo"))
    assert resp.status == status
    assert resp.headers["Location"] == "/dashboard"
    set_cookie = resp.headers["Set-Cookie"]
    assert set_cookie.startswith("crm_session=")
    for attribute in ("HttpOnly", "Path=/", "SameSite=Lax"):
        assert attribute in set_cookie
    token = resp.cookies["crm_session"].value
    assert len(token) >= 32
    me = await crm.get("/api/mobile/me", cookies={"crm_session": token})
    assert await me.json() == {"user": "alice"}
    attempts = record_of(crm).logins
    assert [(a.username, a.ok, a.via) for a in attempts] == [("alice", True, via)]


@pytest.mark.parametrize(
    ("body", "user", "password"),
    [
        (_form, "alice", "wrong"),
        (_form, "mallory", "demo"),
        (_form, "", ""),
        (_multipart, "alice", "wrong"),
    ],
    ids=["form, wrong password", "form, unknown user", "form, empty fields", "multipart, wrong password"],
)
async def test_form_login_failure_shows_form_again(
    crm: Client, body: Callable[[str, str], dict[str, Any]], user: str, password: str
) -> None:
    resp = await crm.post("/login", allow_redirects=False, **body(user, password))
    assert resp.status == 200
    assert "Invalid username or password" in await resp.text()
    assert "Set-Cookie" not in resp.headers
    assert [(a.username, a.ok) for a in record_of(crm).logins] == [(user, False)]


INVALID = {"error": "invalid_credentials"}


@pytest.mark.parametrize(
    ("payload", "status", "answer", "recorded"),
    [
        ({"username": "alice", "password": "nope"}, 401, INVALID, [("alice", False)]),
        ({"username": "alice", "password": 123}, 401, INVALID, [("alice", False)]),
        ({"username": "alice"}, 401, INVALID, [("alice", False)]),
        (["alice", "demo"], 400, {"error": "bad_request"}, []),
    ],
    ids=["wrong password", "password not a string", "no password", "not a JSON object"],
)
async def test_json_login_failure_answers_json(
    crm: Client, payload: Any, status: int, answer: dict[str, str], recorded: list[tuple[str, bool]]
) -> None:
    resp = await crm.post("/login", json=payload, allow_redirects=False)
    assert resp.status == status
    assert await resp.json() == answer
    assert "Set-Cookie" not in resp.headers
    assert [(a.username, a.ok) for a in record_of(crm).logins] == recorded


async def test_json_login_with_broken_json_is_a_bad_request(crm: Client) -> None:
    resp = await crm.post("/login", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await resp.json() == {"error": "bad_request"}


@pytest.mark.parametrize(
    ("next_", "location"),
    [
        ("/contacts?page=2", "/contacts?page=2"),
        ("/billing/settings", "/billing/settings"),
        ("//evil.example/", "/dashboard"),
        ("https://evil.example/", "/dashboard"),
        ("/\\evil.example", "/dashboard"),
        ("javascript:alert(1)", "/dashboard"),
        ("/ok\r\nSet-Cookie: x=1", "/dashboard"),
        ("", "/dashboard"),
    ],
    ids=[
        "same-site path with query is kept",
        "nested path is kept",
        "protocol-relative URL is refused",
        "absolute URL is refused",
        "backslash trick is refused",
        "javascript: is refused",
        "header injection is refused",
        "empty next goes to the dashboard",
    ],
)
async def test_login_redirects_only_to_same_site_next(crm: Client, next_: str, location: str) -> None:
    resp = await crm.post(
        "/login", data={"username": "jim", "password": "demo", "next": next_}, allow_redirects=False
    )
    assert resp.status == 302
    assert resp.headers["Location"] == location


async def test_login_form_carries_next_and_escapes_it(crm: Client) -> None:
    resp = await crm.get("/login", params={"next": '/contacts?a="><script>'})
    html = await resp.text()
    assert resp.status == 200
    assert 'name="username"' in html
    assert 'type="password"' in html
    assert 'name="next" value="/contacts?a=&quot;&gt;&lt;script&gt;"' in html
    assert "<script>" not in html


async def test_login_next_from_query_string_is_used(crm: Client) -> None:
    resp = await crm.post(
        "/login?next=/projects", data={"username": "jim", "password": "demo"}, allow_redirects=False
    )
    assert resp.headers["Location"] == "/projects"


async def test_custom_users_replace_the_demo_users(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(create_app(users={"zoe": SECRET}))
    ok = await client.post("/login", json={"username": "zoe", "password": SECRET}, allow_redirects=False)
    assert ok.status == 303
    demo = await client.post("/login", json={"username": "jim", "password": "demo"}, allow_redirects=False)
    assert demo.status == 401


def test_demo_users_are_the_people_of_the_example_config() -> None:
    assert dict(DEMO_USERS) == {u: "demo" for u in ("jim", "bob", "alice", "pat", "maria", "sam")}


# --- pages need the session cookie -------------------------------------------------------

HTML_PAGES = [
    ("GET", "/dashboard"),
    ("GET", "/projects"),
    ("GET", "/contacts"),
    ("GET", "/contacts/export"),
    ("GET", "/reports/sales/csv"),
    ("POST", "/contacts/bulk-delete"),
    ("GET", "/billing"),
    ("GET", "/billing/settings/tax"),
    ("GET", "/invoices/1001"),
    ("GET", "/timeclock"),
    ("POST", "/timeclock/clock-in"),
]
API_PAGES = [
    ("GET", "/api/mobile/me"),
    ("GET", "/api/mobile/contacts"),
    ("GET", "/api/mobile/contacts/export"),
    ("POST", "/api/mobile/timeclock/clock-in"),
    ("POST", "/api/mobile/timesheets"),
]


@pytest.mark.parametrize(("method", "path"), HTML_PAGES, ids=[f"{m} {p}" for m, p in HTML_PAGES])
@pytest.mark.parametrize("cookie", [None, "forged-token"], ids=["no cookie", "unknown cookie"])
async def test_html_pages_send_anonymous_visitors_to_login(
    crm: Client, method: str, path: str, cookie: str | None
) -> None:
    cookies = {"crm_session": cookie} if cookie else None
    resp = await crm.request(method, path, cookies=cookies, allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/login?next=" + path
    assert not record_of(crm).actions


@pytest.mark.parametrize(("method", "path"), API_PAGES, ids=[f"{m} {p}" for m, p in API_PAGES])
async def test_api_answers_anonymous_requests_401_json(crm: Client, method: str, path: str) -> None:
    resp = await crm.request(method, path, cookies={"crm_session": "forged"}, allow_redirects=False)
    assert resp.status == 401
    assert await resp.json() == {"error": "not_authenticated"}


async def test_anonymous_redirect_keeps_the_query_in_next(crm: Client) -> None:
    resp = await crm.get("/projects?sort=name", allow_redirects=False)
    assert resp.headers["Location"] == "/login?next=/projects?sort%3Dname"


async def test_root_goes_to_dashboard(crm: Client) -> None:
    resp = await crm.get("/", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/dashboard")


@pytest.mark.parametrize(
    ("method", "path", "content_type", "expect"),
    [
        ("GET", "/dashboard", "text/html", "Welcome, jim"),
        ("GET", "/projects", "text/html", "Warehouse racking"),
        ("GET", "/contacts", "text/html", "<td>Grace Hopper</td>"),
        ("GET", "/billing", "text/html", 'href="/invoices/1002"'),
        ("GET", "/billing/settings/tax", "text/html", "Billing: settings/tax"),
        ("GET", "/invoices/1003", "text/html", "Orbital Freight"),
        ("GET", "/invoices/77", "text/html", "Invoice 77"),
        ("GET", "/timeclock", "text/html", 'action="/timeclock/clock-in"'),
        ("GET", "/api/mobile/me", "application/json", '"user": "jim"'),
        ("GET", "/api/mobile/contacts", "application/json", '"Ada Byron"'),
    ],
    ids=[
        "dashboard welcomes the user",
        "projects list",
        "contacts table",
        "billing links invoices",
        "any billing sub-page",
        "known invoice",
        "unknown invoice id still renders",
        "time clock form",
        "mobile: me",
        "mobile: contacts",
    ],
)
async def test_logged_in_pages(jim: Client, method: str, path: str, content_type: str, expect: str) -> None:
    resp = await jim.request(method, path, allow_redirects=False)
    assert resp.status == 200
    assert resp.content_type == content_type
    assert expect in await resp.text()


async def test_page_text_is_escaped(jim: Client) -> None:
    resp = await jim.get("/billing/<b>x</b>")
    assert "&lt;b&gt;x&lt;/b&gt;" in await resp.text()


# --- logout ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"], ids=["GET /logout", "POST /logout"])
async def test_logout_forgets_the_session_and_expires_the_cookie(crm: Client, method: str) -> None:
    token = await log_in(crm, "pat")
    resp = await crm.request(method, "/logout", allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/login")
    expired = resp.headers["Set-Cookie"]
    assert expired.startswith('crm_session=""') or expired.startswith("crm_session=;")
    assert "Max-Age=0" in expired
    # The old token is dead on the server, even if a client kept it.
    again = await crm.get("/dashboard", cookies={"crm_session": token}, allow_redirects=False)
    assert again.status == 302
    assert again.headers["Location"].startswith("/login")


# --- exports and actions -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/contacts/export", "/api/mobile/contacts/export"], ids=["web export", "mobile export"]
)
async def test_contacts_export_is_a_csv_attachment(jim: Client, path: str) -> None:
    resp = await jim.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="contacts.csv"'
    rows = list(csv.reader(io.StringIO(await resp.text())))
    assert rows[0] == ["id", "name", "company", "email", "phone"]
    assert [r[1] for r in rows[1:]] == [c.name for c in CONTACTS]


async def test_report_csv(jim: Client) -> None:
    resp = await jim.get("/reports/q3-sales/csv")
    assert resp.content_type == "text/csv"
    assert 'filename="q3-sales.csv"' in resp.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(await resp.text())))
    assert rows[0] == ["report", "month", "amount"]
    assert len(rows) == 13
    assert {r[0] for r in rows[1:]} == {"q3-sales"}


async def test_bulk_delete_is_recorded(jim: Client) -> None:
    resp = await jim.post("/contacts/bulk-delete", data={"ids": "1, 2,3"})
    assert resp.status == 200
    assert "Deleted 3 contacts" in await resp.text()
    [action] = record_of(jim).actions
    assert (action.kind, action.user, action.via, dict(action.detail)) == (
        "bulk-delete",
        "jim",
        "web",
        {"ids": "1,2,3"},
    )


async def test_web_clock_in_redirects_back_with_a_message(jim: Client) -> None:
    resp = await jim.post("/timeclock/clock-in", data={}, allow_redirects=False)
    assert (resp.status, resp.headers["Location"]) == (302, "/timeclock?clocked_in=1")
    page = await jim.get(resp.headers["Location"])
    assert "Clocked in at" in await page.text()
    assert [(a.kind, a.user, a.via) for a in record_of(jim).actions] == [("clock-in", "jim", "web")]


@pytest.mark.parametrize(
    ("path", "headers", "via"),
    [
        ("/timeclock/clock-in", {"Accept": "application/json"}, "web"),
        ("/api/mobile/timeclock/clock-in", {}, "mobile"),
    ],
    ids=["web clock-in asking for JSON", "mobile clock-in"],
)
async def test_clock_in_json(jim: Client, path: str, headers: dict[str, str], via: str) -> None:
    resp = await jim.post(path, headers=headers, allow_redirects=False)
    assert resp.status == 200
    answer = await resp.json()
    assert (answer["ok"], answer["user"]) == (True, "jim")
    assert [(a.kind, a.user, a.via) for a in record_of(jim).actions] == [("clock-in", "jim", via)]


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"hours": 7.5, "project": "101"}, 201),
        ({"hours": 24}, 201),
        ({"hours": 0}, 400),
        ({"hours": 25}, 400),
        ({"hours": "8"}, 400),
        ({"hours": True}, 400),
        ({}, 400),
        ([7.5], 400),
    ],
    ids=[
        "hours with project",
        "a whole day",
        "zero hours",
        "more than a day",
        "hours as a string",
        "hours as a boolean",
        "no hours",
        "not an object",
    ],
)
async def test_mobile_timesheets(jim: Client, payload: Any, status: int) -> None:
    resp = await jim.post("/api/mobile/timesheets", json=payload)
    assert resp.status == status
    recorded = [(a.kind, a.user, a.via) for a in record_of(jim).actions]
    assert recorded == ([("timesheet", "jim", "mobile")] if status == 201 else [])


# --- websocket ---------------------------------------------------------------------------


async def test_websocket_greets_and_echoes_text_and_binary(jim: Client) -> None:
    async with jim.ws_connect("/ws/notifications") as ws:
        greeting = await ws.receive(timeout=5)
        assert (greeting.type, greeting.data) == (WSMsgType.TEXT, "hello jim")
        await ws.send_str("ping ünïcode")
        reply = await ws.receive(timeout=5)
        assert (reply.type, reply.data) == (WSMsgType.TEXT, "ping ünïcode")
        payload = bytes(range(256)) * 300
        await ws.send_bytes(payload)
        reply = await ws.receive(timeout=5)
        assert (reply.type, reply.data) == (WSMsgType.BINARY, payload)


@pytest.mark.parametrize("code", [1000, 1001, 1011, 3000, 4321], ids=lambda c: f"close {c}")
async def test_websocket_closes_with_the_asked_code(jim: Client, code: int) -> None:
    async with jim.ws_connect("/ws/notifications") as ws:
        await ws.receive(timeout=5)
        await ws.send_str(f"close:{code}")
        message = await ws.receive(timeout=5)
        assert message.type == WSMsgType.CLOSE
        assert message.data == code
        assert ws.close_code == code


@pytest.mark.parametrize("code", ["1005", "999", "abc"], ids=["reserved 1005", "below range", "not a number"])
async def test_websocket_refuses_unsendable_close_codes(jim: Client, code: str) -> None:
    async with jim.ws_connect("/ws/notifications") as ws:
        await ws.receive(timeout=5)
        await ws.send_str(f"close:{code}")
        reply = await ws.receive(timeout=5)
        assert reply.type == WSMsgType.TEXT
        assert reply.data.startswith("error:")


async def test_websocket_needs_the_cookie(crm: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await crm.ws_connect("/ws/notifications")
    assert info.value.status == 401


# --- large download and upload -----------------------------------------------------------

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345]


@pytest.mark.parametrize("size", SIZES, ids=[f"{s} bytes" for s in SIZES])
@pytest.mark.parametrize("length", [False, True], ids=["chunked", "content-length"])
async def test_large_download_streams_the_documented_pattern(crm: Client, size: int, length: bool) -> None:
    params = {"size": str(size)} | ({"length": "1"} if length else {})
    resp = await crm.get("/download/large", params=params)  # no login: a bench endpoint
    assert resp.status == 200
    if length:
        assert resp.headers["Content-Length"] == str(size)
        assert "Transfer-Encoding" not in resp.headers
    else:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in resp.headers
    body = await resp.read()
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(expected_download(size)).hexdigest()


async def test_large_download_defaults_to_10_mib(crm: Client) -> None:
    resp = await crm.get("/download/large")
    digest = hashlib.sha256()
    total = 0
    async for chunk in resp.content.iter_chunked(CHUNK):
        digest.update(chunk)
        total += len(chunk)
    assert total == 10 * 1024 * 1024
    assert digest.hexdigest() == hashlib.sha256(expected_download(total)).hexdigest()


@pytest.mark.parametrize(
    "size", ["-1", "abc", str(4 * 1024**3 + 1)], ids=["negative", "not a number", "over the 4 GiB cap"]
)
async def test_large_download_refuses_bad_sizes(crm: Client, size: str) -> None:
    resp = await crm.get("/download/large", params={"size": size})
    assert resp.status == 400


async def _body(parts: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


@pytest.mark.parametrize(
    "parts",
    [[], [b"x"], [b"a" * CHUNK, b"b" * 10, bytes(range(256)) * 4000], [b"\0" * (2 * 1024 * 1024 + 3)]],
    ids=["empty body", "one byte", "several uneven chunks", "2 MiB of zeros (over the form size limit)"],
)
async def test_upload_hashes_the_streamed_body(crm: Client, parts: list[bytes]) -> None:
    whole = b"".join(parts)
    resp = await crm.post("/upload", data=_body(parts))
    assert resp.status == 200
    assert await resp.json() == {"bytes": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}
    [seen] = record_of(crm).requests_to("/upload")
    assert seen.body_length == len(whole)


# --- echo --------------------------------------------------------------------------------


async def test_echo_shows_every_header_with_duplicates(crm: Client) -> None:
    headers = [
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-For", "198.51.100.7"),
        ("X_Forwarded_For", "192.0.2.1"),
        ("Cookie", "a=1"),
    ]
    resp = await crm.put("/echo/deep/path?b=2&a=1", headers=CIMultiDict(headers), data=b"hi")
    got = await resp.json()
    assert got["method"] == "PUT"
    assert got["path"] == "/echo/deep/path?b=2&a=1"
    assert got["query"] == "b=2&a=1"
    for pair in headers:
        assert list(pair) in got["headers"]
    names = [name for name, _ in got["headers"]]
    assert names.count("X-Forwarded-For") == 2
    assert (got["body_length"], got["body_sha256"]) == (2, hashlib.sha256(b"hi").hexdigest())


@pytest.mark.parametrize(
    "target",
    ["/echo/a/../b//c;p=1?x=%41&y", "/echo/%7Euser/%2e%2E/x", "/echo"],
    ids=["dot segments, double slash, params", "percent-encodings stay as sent", "bare /echo"],
)
async def test_echo_path_is_the_raw_request_target(crm: Client, target: str) -> None:
    # A raw socket: an HTTP client library would normalise the path before sending it.
    assert crm.server.host is not None
    assert crm.server.port is not None
    reader, writer = await asyncio.open_connection(crm.server.host, crm.server.port)
    writer.write(f"DELETE {target} HTTP/1.1\r\nHost: crm\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    got = json.loads(body)
    assert (got["method"], got["path"]) == ("DELETE", target)
    assert got["query"] == target.partition("?")[2]


# --- the CRM's own record ----------------------------------------------------------------


async def test_record_holds_forwarding_headers_and_cookie_names_never_secrets(
    aiohttp_client: MakeClient,
) -> None:
    client = await aiohttp_client(create_app(users={"jim": SECRET}))
    login = await client.post(
        "/login",
        data={"username": "jim", "password": SECRET},
        headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "req-1"},
        allow_redirects=False,
    )
    token = login.cookies["crm_session"].value
    await client.get(
        "/contacts",
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "X-Real-IP": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "crm.example.com",
            "X_Forwarded_For": "6.6.6.6",
            "X-Gateway-User": "jim",
            "Accept-Language": "en-GB",
            "Authorization": "Bearer very-secret",
            "Cookie": f"crm_session={token}; crmgw_session=gw-secret-value",
        },
    )
    record = record_of(client)
    [contacts] = record.requests_to("/contacts")
    assert contacts.user == "jim"
    assert contacts.status == 200
    assert contacts.header("x-forwarded-for") == ["203.0.113.9", "6.6.6.6"]
    assert contacts.header("X-Real-IP") == ["203.0.113.9"]
    assert contacts.header("x-forwarded-proto") == ["https"]
    assert contacts.header("x-forwarded-host") == ["crm.example.com"]
    assert contacts.header("x-gateway-user") == ["jim"]
    assert contacts.header("accept-language") == []  # not a header of interest
    assert set(contacts.cookies) == {"crm_session", "crmgw_session"}
    [login_seen] = record.requests_to("/login")
    assert login_seen.header("x-request-id") == ["req-1"]
    assert login_seen.body_length == len(f"username=jim&password={SECRET}")

    dumped = json.dumps(
        [
            await (await client.get("/__crm/requests")).json(),
            await (await client.get("/__crm/logins")).json(),
            await (await client.get("/__crm/actions")).json(),
        ]
    )
    for secret in (SECRET, token, "gw-secret-value", "very-secret"):
        assert secret not in dumped
    assert [(a["username"], a["ok"]) for a in json.loads(dumped)[1]] == [("jim", True)]


async def test_record_lists_requests_in_order_and_skips_its_own_reads(crm: Client) -> None:
    await crm.get("/health")
    await crm.get("/nowhere")
    await crm.post("/login", json={"username": "sam", "password": "x"})
    entries = await (await crm.get("/__crm/requests")).json()
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("GET", "/health", 200),
        ("GET", "/nowhere", 404),
        ("POST", "/login", 401),
    ]
    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(seqs)
    newer = await (await crm.get("/__crm/requests", params={"since": str(seqs[0])})).json()
    assert [e["seq"] for e in newer] == seqs[1:]


async def test_record_counts_body_bytes_the_handler_did_not_read(crm: Client) -> None:
    await crm.post("/logout", data=b"z" * 300_000, allow_redirects=False)
    [seen] = record_of(crm).requests_to("/logout")
    assert seen.body_length == 300_000


async def test_reset_clears_requests_logins_and_actions(jim: Client) -> None:
    await jim.post("/api/mobile/timeclock/clock-in")
    record = record_of(jim)
    assert record.requests
    assert record.logins
    assert record.actions
    resp = await jim.post("/__crm/reset")
    assert resp.status == 200
    assert (record.requests, record.logins, record.actions) == ((), (), ())
    assert await (await jim.get("/__crm/logins")).json() == []
    me = await jim.get("/api/mobile/me")  # sessions survive a reset of the record
    assert me.status == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/__crm/requests"),
        ("GET", "/__crm/logins"),
        ("GET", "/__crm/actions"),
        ("POST", "/__crm/reset"),
    ],
    ids=["requests", "logins", "actions", "reset"],
)
@pytest.mark.parametrize(
    "header", ["X-Forwarded-For", "X-Real-IP", "Forwarded"], ids=["via XFF", "via X-Real-IP", "via Forwarded"]
)
async def test_record_is_not_served_through_a_proxy(crm: Client, method: str, path: str, header: str) -> None:
    await crm.post("/login", json={"username": "jim", "password": "demo"})
    resp = await crm.request(method, path, headers={header: "for=192.0.2.1"})
    assert resp.status == 404
    assert len(record_of(crm).logins) == 1  # a proxied reset did not clear anything


async def test_record_is_bounded(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(create_app(record_limit=3))
    for n in range(5):
        await client.get(f"/health?n={n}")
        await client.post("/login", json={"username": f"u{n}", "password": "x"})
    record = record_of(client)
    assert [r.query for r in record.requests] == ["", "n=4", ""]
    assert [a.username for a in record.logins] == ["u2", "u3", "u4"]


def test_record_entry_finished_after_reset_is_ignored() -> None:
    record = CRMRecord(limit=10)
    seq = record.request_started(method="GET", path="/", query="", headers=(), cookies=(), user=None)
    record.reset()
    record.request_finished(seq, status=200, body_length=0)
    assert record.requests == ()
    with pytest.raises(ValueError, match="at least 1"):
        CRMRecord(limit=0)


# --- slow, health, start -----------------------------------------------------------------


async def test_slow_request_is_visible_in_the_record_while_in_flight(crm: Client) -> None:
    started = time.monotonic()
    task = asyncio.create_task(crm.get("/slow", params={"seconds": "0.3"}))
    for _ in range(100):
        if record_of(crm).requests_to("/slow"):
            break
        await asyncio.sleep(0.01)
    [in_flight] = record_of(crm).requests_to("/slow")
    assert in_flight.status is None
    resp = await task
    assert resp.status == 200
    assert await resp.text() == "slept 0.3s\n"
    assert time.monotonic() - started >= 0.3
    [done] = record_of(crm).requests_to("/slow")
    assert done.status == 200


@pytest.mark.parametrize("seconds", ["-1", "soon", "3601"], ids=["negative", "not a number", "over an hour"])
async def test_slow_refuses_bad_durations(crm: Client, seconds: str) -> None:
    resp = await crm.get("/slow", params={"seconds": seconds})
    assert resp.status == 400


async def test_health(crm: Client) -> None:
    resp = await crm.get("/health")
    assert (resp.status, await resp.text()) == (200, "ok")


async def test_start_serves_on_a_free_port_and_exposes_the_record() -> None:
    runner, port = await start("127.0.0.1", 0, users={"jim": SECRET})
    try:
        assert port > 0
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{port}/login",
            json={"username": "jim", "password": SECRET},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
        assert [a.username for a in runner.app[CRMLog].logins] == ["jim"]
    finally:
        await runner.cleanup()
