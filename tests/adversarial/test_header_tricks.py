"""Header tricks: spoofed forwarding, the gateway's own headers, Host games, request smuggling (issue 5 item 2).

Every test asks the demo CRM what it received: the forwarding headers it would
believe, the identity headers it would trust, and how many requests arrived.
The CRM's record compares header names after lower-casing and mapping ``_`` to
``-``, as CGI, WSGI and PHP back ends do, so an underscore spelling that slips
through shows up there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.headers import OVERRIDE_HEADERS
from tests.adversarial.support import (
    browser_login,
    cookie_header,
    raw_request,
    reached_blocked,
    recorded_header,
    send_raw,
    status_of,
    statuses,
)
from tests.e2e.harness import HOME, OFFICE, WAREHOUSE, stack

OPEN: dict[str, Any] = {}  # no rules: everything is forwarded, so the headers are what is tested


@dataclass(frozen=True)
class Spoof:
    description: str
    headers: tuple[tuple[str, str], ...]


SPOOFS = [
    Spoof("X-Forwarded-For", (("X-Forwarded-For", OFFICE),)),
    Spoof("X-Forwarded-For, a list", (("X-Forwarded-For", f"{OFFICE}, {OFFICE}"),)),
    Spoof("X-Forwarded-For, two lines", (("X-Forwarded-For", OFFICE), ("X-Forwarded-For", OFFICE))),
    Spoof("X_Forwarded_For (underscores)", (("X_Forwarded_For", OFFICE),)),
    Spoof("X-Forwarded_For (mixed)", (("X-Forwarded_For", OFFICE),)),
    Spoof("x_forwarded-for (mixed, lower case)", (("x_forwarded-for", OFFICE),)),
    Spoof("Forwarded", (("Forwarded", f"for={OFFICE};proto=https"),)),
    Spoof("X-Real-IP", (("X-Real-IP", OFFICE),)),
    Spoof("X_Real_IP (underscores)", (("X_Real_IP", OFFICE),)),
    Spoof("X-Real_IP (mixed)", (("X-Real_IP", OFFICE),)),
    Spoof("X-Forwarded-Host", (("X-Forwarded-Host", "evil.example"),)),
    Spoof("X_Forwarded_Host (underscores)", (("X_Forwarded_Host", "evil.example"),)),
    Spoof("X-Forwarded-Proto", (("X-Forwarded-Proto", "https"),)),
    Spoof("X-Forwarded_Proto (mixed)", (("X-Forwarded_Proto", "https"),)),
    Spoof("everything at once", (("X-Forwarded-For", OFFICE), ("Forwarded", f"for={OFFICE}"),
                                 ("X-Real-IP", OFFICE), ("X-Forwarded-Host", "evil.example"))),
]


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
@pytest.mark.parametrize("spoof", SPOOFS, ids=[s.description for s in SPOOFS])
async def test_forwarding_headers_from_an_untrusted_peer_are_ignored_and_replaced(
    tmp_path: Path, spoof: Spoof, header: str
) -> None:
    # A proxy is trusted, just not this peer: the headers must still be ignored.
    async with stack(tmp_path, policy=OPEN, client_ip={"trusted_proxies": ["127.0.0.9"], "header": header}) as s:
        response = await send_raw(s.port, raw_request("GET", "/echo", spoof.headers), source=HOME)
        assert status_of(response) == 200
        [entry] = await s.crm_requests()
        assert recorded_header(entry, "X-Forwarded-For") == [HOME]
        assert recorded_header(entry, "X-Real-IP") == [HOME]
        assert recorded_header(entry, "X-Forwarded-Host") == ["crm.example"]
        assert recorded_header(entry, "X-Forwarded-Proto") == ["http"]
        assert recorded_header(entry, "Forwarded") == []


@pytest.mark.parametrize("spoof", SPOOFS[:10], ids=[s.description for s in SPOOFS[:10]])
async def test_a_spoofed_office_address_does_not_open_the_crm_from_home(tmp_path: Path, spoof: Spoof) -> None:
    async with stack(tmp_path) as s:
        response = await send_raw(s.port, raw_request("GET", "/dashboard", spoof.headers), source=HOME)
        assert status_of(response) == 403
        assert await s.crm_requests() == []
        denied = s.logs.events("access.denied")[-1]
        assert denied["client_ip"] == HOME and denied["reason"] == "ip_not_allowed"


async def test_several_x_forwarded_for_lines_from_a_trusted_proxy_are_joined_in_order(tmp_path: Path) -> None:
    """Lines 'HOME' then 'WAREHOUSE' read as 'HOME, WAREHOUSE': the rightmost untrusted entry is the client."""
    async with stack(tmp_path, policy=OPEN, client_ip={"trusted_proxies": [OFFICE]}) as s:
        headers = (("X-Forwarded-For", HOME), ("X-Forwarded-For", WAREHOUSE))
        response = await send_raw(s.port, raw_request("GET", "/echo", headers), source=OFFICE)
        assert status_of(response) == 200
        [entry] = await s.crm_requests()
        assert recorded_header(entry, "X-Forwarded-For") == [WAREHOUSE]
        assert recorded_header(entry, "X-Real-IP") == [WAREHOUSE]


async def test_a_trusted_proxy_chain_decides_the_lockdown(tmp_path: Path) -> None:
    """Behind a trusted proxy the client is who the proxy says, both ways: home is denied, the office allowed."""
    async with stack(tmp_path, client_ip={"trusted_proxies": ["127.0.0.9"]}) as s:
        from_home = raw_request("GET", "/dashboard", (("X-Forwarded-For", f"{OFFICE}, {HOME}"),))
        assert status_of(await send_raw(s.port, from_home, source="127.0.0.9")) == 403
        assert await s.crm_requests() == []
        from_office = raw_request("GET", "/dashboard", (("X-Forwarded-For", f"{HOME}, {OFFICE}"),))
        assert status_of(await send_raw(s.port, from_office, source="127.0.0.9")) == 302
        [entry] = await s.crm_requests()
        assert recorded_header(entry, "X-Forwarded-For") == [OFFICE]


async def test_an_unreadable_entry_reached_by_the_walk_is_refused(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN, client_ip={"trusted_proxies": [OFFICE]}) as s:
        for value in ("not-an-ip", f"{HOME}, unknown", "_hidden", f"{HOME}:99999"):
            response = await send_raw(s.port, raw_request("GET", "/echo", (("X-Forwarded-For", value),)))
            assert status_of(response) == 400, value
        assert await s.crm_requests() == []


IDENTITY_SPOOFS = [
    ("X-Gateway-User", "maria"),
    ("X_Gateway_User", "maria"),
    ("X-Gateway_User", "maria"),
    ("x-gateway-user", "maria"),
    ("X-Gateway-Channel", "mobile"),
    ("X_Gateway_Channel", "mobile"),
    ("X-Gateway-Worker", "99"),
    ("X_Gateway_Worker", "99"),
    ("X-Request-ID", "chosen-by-client"),
    ("X_Request_ID", "chosen-by-client"),
    ("X-Request_ID", "chosen-by-client"),
]


@pytest.mark.parametrize(("name", "value"), IDENTITY_SPOOFS, ids=[n for n, _ in IDENTITY_SPOOFS])
async def test_the_gateways_own_headers_sent_by_a_client_never_reach_the_crm(
    tmp_path: Path, name: str, value: str
) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        response = await send_raw(s.port, raw_request("GET", "/echo", ((name, value),)))
        assert status_of(response) == 200
        [entry] = await s.crm_requests()
        for own in ("X-Gateway-User", "X-Gateway-Channel", "X-Gateway-Worker", "X-Request-ID"):
            assert value not in recorded_header(entry, own), own
        assert len(recorded_header(entry, "X-Request-ID")) == 1


@pytest.mark.parametrize("name", [*OVERRIDE_HEADERS, "X_Original_URL", "X-Original_Url", "x_client_ip"])
async def test_headers_a_back_end_takes_the_client_address_scheme_or_path_from_never_reach_the_crm(
    tmp_path: Path, name: str
) -> None:
    """The CRM hears the client's address and scheme from the gateway alone, and the path from the request
    line the gateway judged: pat's `GET /echo` with `X-Original-URL: /billing` is billing to IIS or Zend."""
    async with stack(tmp_path) as s:
        pat = await browser_login(s, "pat")
        await s.reset_crm()
        response = await send_raw(s.port, raw_request("GET", "/echo", [("Cookie", cookie_header(pat, s)),
                                                                        (name, "/billing")]))
        assert status_of(response) == 200
        [entry] = await s.crm_requests()
        assert recorded_header(entry, name) == [], name


async def test_host_variations(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        duplicate = raw_request("GET", "/echo", (("Host", "evil.example"),))  # a second Host line
        assert status_of(await send_raw(s.port, duplicate)) == 400
        missing = raw_request("GET", "/echo", (), host="")
        assert status_of(await send_raw(s.port, missing)) == 400
        assert await s.crm_requests() == []
        # Absolute-form naming another host than the Host header: one origin-form request, one Host.
        mismatch = raw_request("GET", "http://evil.example/echo?a=1", ())
        assert status_of(await send_raw(s.port, mismatch)) == 200
        [entry] = await s.crm_requests()
        assert entry["path"] == "/echo?a=1"
        hosts = recorded_header(entry, "Host")
        assert len(hosts) == 1
        assert recorded_header(entry, "X-Forwarded-Host") == hosts


def _hidden(target: str, cookie: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: crm.example\r\nCookie: {cookie}\r\n\r\n".encode()


@dataclass(frozen=True)
class Smuggle:
    description: str
    head: str  # request line and headers, without the final blank line; COOKIE is replaced
    body: bytes  # HIDDEN is replaced by a complete GET /billing request carrying pat's cookie
    body_length: int | None  # None: refused with 400; else one POST /echo with this many body bytes


SMUGGLES = [
    Smuggle("Content-Length and Transfer-Encoding: chunked",
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked",
            b"0\r\n\r\nHIDDEN", None),
    Smuggle("Transfer-Encoding: chunked then Content-Length",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 300",
            b"0\r\n\r\nHIDDEN", None),
    Smuggle("duplicate Content-Length, equal values",
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5", b"hello", None),
    Smuggle("conflicting Content-Length",
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 300", b"helloHIDDEN", None),
    Smuggle("Content-Length as a list",
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5", b"hello", None),
    Smuggle("signed Content-Length", "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: +5", b"hello", None),
    Smuggle("Transfer-Encoding: chunked, identity (chunked not last)",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity",
            b"5\r\nhello\r\n0\r\n\r\nHIDDEN", None),
    Smuggle("Transfer-Encoding on two lines",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            b"5\r\nhello\r\n0\r\n\r\n", None),
    Smuggle("unknown transfer coding", "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked",
            b"5\r\nhello\r\n0\r\n\r\n", None),
    Smuggle("space before the colon of Transfer-Encoding",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 5", b"hello", None),
    Smuggle("obsolete line folding of Transfer-Encoding",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 5", b"hello", None),
    Smuggle("obsolete line folding hiding a header",
            "POST /echo HTTP/1.1\r\nHost: h\r\nX-Note: a\r\n X-Gateway-User: maria\r\nContent-Length: 5",
            b"hello", None),
    Smuggle("bare LF line endings", "POST /echo HTTP/1.1\nHost: h\nContent-Length: 5\n", b"hello", None),
    Smuggle("a bare LF among CRLFs", "POST /echo HTTP/1.1\r\nHost: h\nContent-Length: 5", b"hello", None),
    Smuggle("a bare CR", "POST /echo HTTP/1.1\r\nHost: h\rContent-Length: 5", b"hello", None),
    Smuggle("chunk size overflowing 64 bits", "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked",
            b"10000000000000005\r\nhello\r\n0\r\n\r\n", None),
    Smuggle("NUL in a header value", "POST /echo HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\nContent-Length: 5",
            b"hello", None),
    # Well-formed shapes: handled, and the CRM sees exactly one request with exactly its body.
    Smuggle("a second request hidden in a Content-Length body",
            "POST /echo HTTP/1.1\r\nHost: h\r\nCookie: COOKIE\r\nContent-Length: LENGTH", b"HIDDEN", -1),
    Smuggle("a second request hidden in a chunked body",
            "POST /echo HTTP/1.1\r\nHost: h\r\nCookie: COOKIE\r\nTransfer-Encoding: chunked",
            b"CHUNKED-HIDDEN", -1),
    Smuggle("Transfer-Encoding: identity, chunked (chunked last is valid)",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity, chunked",
            b"5\r\nhello\r\n0\r\n\r\n", 5),
    Smuggle("Transfer-Encoding: Chunked (case-insensitive coding)",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked", b"5\r\nhello\r\n0\r\n\r\n", 5),
    Smuggle("chunk extensions", "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked",
            b"5;x=1\r\nhello\r\n0\r\n\r\n", 5),
    Smuggle("underscore Transfer_Encoding is not framing",
            "POST /echo HTTP/1.1\r\nHost: h\r\nTransfer_Encoding: chunked\r\nContent-Length: 5", b"hello", 5),
]


@pytest.mark.parametrize("smuggle", SMUGGLES, ids=[s.description for s in SMUGGLES])
async def test_request_smuggling_shapes(tmp_path: Path, smuggle: Smuggle) -> None:
    """Refused with 400, or one well-formed request upstream: never a hidden GET /billing for pat."""
    async with stack(tmp_path) as s:
        pat = cookie_header(await browser_login(s, "pat"), s)
        await s.reset_crm()
        hidden = _hidden("/billing", pat)
        # Each placeholder filled once, values last: a session token put in may hold "HIDDEN" or "LENGTH".
        if b"CHUNKED-HIDDEN" in smuggle.body:
            body = smuggle.body.replace(b"CHUNKED-HIDDEN", b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden))
        else:
            body = smuggle.body.replace(b"HIDDEN", hidden)
        expected = len(hidden) if smuggle.body_length == -1 else smuggle.body_length
        head = smuggle.head.replace("LENGTH", str(len(body))).replace("COOKIE", pat)
        eol = "\n" if "\r" not in head else "\r\n"
        data = (head + eol + "Connection: close" + eol + eol).encode("latin-1") + body
        response = await send_raw(s.port, data, timeout=1.0)
        assert await reached_blocked(s, "billing") == []
        if expected is None:
            assert statuses(response) == [400]
            assert await s.crm_requests() == []
        else:
            assert statuses(response) == [200]
            [entry] = await s.crm_requests()
            assert (entry["method"], entry["path"], entry["body_length"]) == ("POST", "/echo", expected)


async def test_a_denied_request_with_a_body_does_not_let_its_body_through_as_a_request(tmp_path: Path) -> None:
    """The gateway answers 403 without reading the body; the hidden request in it must stay body."""
    async with stack(tmp_path) as s:
        pat = cookie_header(await browser_login(s, "pat"), s)
        await s.reset_crm()
        hidden = _hidden("/billing/settings", pat)
        data = raw_request("POST", "/billing", (("Cookie", pat),), hidden, close=False)
        response = await send_raw(s.port, data, timeout=1.0)
        assert statuses(response) == [403]
        assert await s.crm_requests() == []


async def test_metrics_stay_closed_to_a_spoofed_loopback_address(tmp_path: Path) -> None:
    async with stack(tmp_path, client_ip={"trusted_proxies": ["127.0.0.9"]}) as s:
        for name in ("X-Forwarded-For", "X_Forwarded_For", "X-Real-IP", "Forwarded"):
            value = "for=127.0.0.1" if name == "Forwarded" else OFFICE
            response = await send_raw(s.port, raw_request("GET", "/_gateway/metrics", ((name, value),)), source=HOME)
            assert status_of(response) == 404, name
        response = await send_raw(s.port, raw_request("GET", "/_gateway/metrics", ()), source=OFFICE)
        assert status_of(response) == 200  # control: the office reads them
        assert await s.crm_requests() == []


async def test_a_cookie_header_named_in_connection_is_not_forwarded_even_when_a_cookie_is_struck(
    tmp_path: Path,
) -> None:
    """Connection: Cookie makes the Cookie header hop-by-hop; striking an unbound CRM cookie from it
    must not bring the rest back."""
    async with stack(tmp_path, policy=OPEN) as s:
        headers = (("Connection", "Cookie"), ("Cookie", "crm_session=stolen; theme=dark"))
        response = await send_raw(s.port, raw_request("GET", "/echo", headers), source=OFFICE)
        assert status_of(response) == 200
        echoed = json.loads(response.split(b"\r\n\r\n", 1)[1])  # what /echo received, every header
        assert [value for name, value in echoed["headers"] if name.lower() == "cookie"] == []
