"""The reverse proxy end to end: real gateway, real demo CRM, real sockets (issue 2)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import HOME, OFFICE, free_port, stack

# A policy with no rules: everything is allowed, so these tests see the proxy alone.
OPEN: dict[str, object] = {}


def echo_headers(body: dict[str, object]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in body["headers"]:  # type: ignore[union-attr]
        out.setdefault(name.lower(), []).append(value)
    return out


async def test_forwarding_headers_are_set_by_the_gateway_and_client_copies_replaced(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        client = s.client(HOME)
        sent = {
            "X-Forwarded-For": "10.9.9.9",
            "X_Forwarded_For": "10.8.8.8",
            "X-Real-IP": "10.7.7.7",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "Forwarded": "for=10.6.6.6",
            "X-Gateway-User": "maria",
            "X-Request-ID": "chosen-by-client",
            "Host": "crm.example.com",
        }
        async with client.get(s.url("/echo"), headers=sent) as resp:
            assert resp.status == 200
            body = await resp.json()
            request_id = resp.headers["X-Request-ID"]
        headers = echo_headers(body)
        assert headers["x-forwarded-for"] == [HOME]
        assert headers["x-real-ip"] == [HOME]
        assert headers["x-forwarded-proto"] == ["http"]
        assert headers["x-forwarded-host"] == ["crm.example.com"]
        assert headers["host"] == ["crm.example.com"]  # preserve_host defaults to true
        assert headers["x-request-id"] == [request_id] and request_id != "chosen-by-client"
        for gone in ("x_forwarded_for", "forwarded", "x-gateway-user"):
            assert gone not in headers, gone


async def test_hop_by_hop_headers_are_removed_including_those_named_in_connection(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        client = s.client(OFFICE)
        sent = {
            "Connection": "keep-alive, X-Private-Hop",
            "X-Private-Hop": "secret-for-next-hop",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-End-To-End": "kept",
        }
        async with client.get(s.url("/echo"), headers=sent) as resp:
            headers = echo_headers(await resp.json())
        for gone in ("x-private-hop", "keep-alive", "te", "proxy-authorization"):
            assert gone not in headers, gone
        assert headers["x-end-to-end"] == ["kept"]


async def test_preserve_host_false_sends_the_upstream_host(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN, upstream={"preserve_host": False}) as s:
        async with s.client().get(s.url("/echo"), headers={"Host": "crm.example.com"}) as resp:
            headers = echo_headers(await resp.json())
        assert headers["host"] == [f"127.0.0.1:{s.crm_port}"]
        assert headers["x-forwarded-host"] == ["crm.example.com"]


async def test_request_and_response_bodies_stream_intact(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 17)

    async def chunks():  # type: ignore[no-untyped-def]
        for start in range(0, len(payload), 100_000):
            yield payload[start : start + 100_000]

    async with stack(tmp_path, policy=OPEN) as s:
        client = s.client()
        async with client.post(s.url("/upload"), data=payload) as resp:
            assert (await resp.json())["sha256"] == hashlib.sha256(payload).hexdigest()
        async with client.post(s.url("/upload"), data=chunks()) as resp:  # chunked transfer coding
            assert (await resp.json())["sha256"] == hashlib.sha256(payload).hexdigest()
        size = 25 * 1024 * 1024 + 3
        async with client.get(s.crm_url(f"/download/large?size={size}")) as direct:
            expected = hashlib.sha256(await direct.read()).hexdigest()
        for query in (f"size={size}", f"size={size}&length=1"):
            digest = hashlib.sha256()
            async with client.get(s.url(f"/download/large?{query}")) as resp:
                assert resp.status == 200
                async for chunk in resp.content.iter_chunked(65536):
                    digest.update(chunk)
            assert digest.hexdigest() == expected, query


async def test_head_gets_headers_and_no_body(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        async with s.client().head(s.url("/echo/head")) as resp:
            assert resp.status == 200
            assert int(resp.headers["Content-Length"]) > 0
            assert await resp.read() == b""


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_forwarded(tmp_path: Path, method: str) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        async with s.client().request(method, s.url("/echo/x"), data=b"abc" if method != "GET" else None) as resp:
            assert resp.status == 200
            assert (await resp.json())["method"] == method


async def test_websocket_relays_text_binary_and_close_codes(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        client = s.client()
        # The demo CRM's notifications need its session cookie: log in straight through.
        async with client.post(s.url("/login"), data={"username": "jim", "password": "demo"},
                               allow_redirects=False) as resp:
            assert resp.status in (302, 303)
        async with client.ws_connect(s.url("/ws/notifications")) as ws:
            greeting = await ws.receive(timeout=5)
            assert greeting.type == aiohttp.WSMsgType.TEXT
            await ws.send_str("hello")
            assert (await ws.receive(timeout=5)).data == "hello"
            await ws.send_bytes(b"\x00\x01binary")
            message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.BINARY and message.data == b"\x00\x01binary"
            await ws.send_str("close:4001")
            message = await ws.receive(timeout=5)
            assert message.type == aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 4001 or message.data == 4001


async def test_gateway_paths_are_answered_here_and_never_forwarded(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        client = s.client()
        async with client.get(s.url("/_gateway/health")) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        async with client.get(s.url("/_gateway/ready")) as resp:
            assert resp.status == 200
        async with client.get(s.url("/_gateway/whoami")) as resp:
            body = await resp.json()
            assert body["client_ip"] == OFFICE and body["channel"] == "web"
        for path in ("/_gateway/nothing", "/x/../_gateway/secret", "/_GATEWAY/../_gateway/x"):
            async with client.get(s.url(path)) as resp:
                assert resp.status == 404, path
        assert not [r for r in await s.crm_requests() if "_gateway" in r["path"]]


@pytest.mark.parametrize(
    ("sent", "forwarded"),
    [
        ("/x/../echo/a", "/echo/a"),
        ("//echo//a/./b", "/echo/a/b"),
        ("/%65cho/a", "/echo/a"),
    ],
    ids=["dot-dot", "double-slash-and-dot", "encoded-letter"],
)
async def test_the_normalised_path_is_what_the_crm_receives(tmp_path: Path, sent: str, forwarded: str) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        client = s.client()
        async with client.get(s.url(sent), skip_auto_headers=()) as resp:
            assert resp.status == 200
            assert (await resp.json())["path"] == forwarded


@pytest.mark.parametrize("path", ["/echo%2Fx", "/echo%5Cx", "/echo/%00", "/echo/%zz"],
                         ids=["encoded-slash", "encoded-backslash", "nul", "bad-escape"])
async def test_malformed_paths_answer_400_and_are_logged(tmp_path: Path, path: str) -> None:
    async with stack(tmp_path, policy=OPEN) as s:
        from yarl import URL

        async with s.client().get(URL(s.url(path), encoded=True)) as resp:
            assert resp.status == 400
            assert resp.headers["X-Request-ID"]
        assert s.logs.events("request.bad_path")
        assert not [r for r in await s.crm_requests() if r["path"].startswith("/echo")]


async def test_trusted_proxy_chain_gives_the_real_client(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN, client_ip={"trusted_proxies": ["127.0.0.5", "10.0.0.0/8"]}) as s:
        lb = s.client("127.0.0.5")
        sent = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "crm.example.com"}
        async with lb.get(s.url("/echo"), headers=sent) as r:
            headers = echo_headers(await r.json())
            assert headers["x-forwarded-for"] == ["203.0.113.9"]
            # A trusted front's view of scheme and host is passed on; nobody else's is.
            assert headers["x-forwarded-proto"] == ["https"]
            assert headers["x-forwarded-host"] == ["crm.example.com"]
        # The same header from an untrusted peer is ignored.
        async with s.client(HOME).get(s.url("/echo"), headers={"X-Forwarded-For": "203.0.113.9"}) as r:
            assert echo_headers(await r.json())["x-forwarded-for"] == [HOME]
        async with lb.get(s.url("/echo"), headers={"X-Forwarded-For": "1.2.3.4, garbage"}) as r:
            assert r.status == 400
        assert s.logs.events("request.bad_client_address")


async def test_upstream_down_answers_502_and_the_gateway_stays_up(tmp_path: Path) -> None:
    dead = free_port()
    async with stack(tmp_path, policy=OPEN, upstream={"url": f"http://127.0.0.1:{dead}"}) as s:
        client = s.client()
        for _ in range(3):
            async with client.get(s.url("/dashboard"), headers={"Accept": "text/html"}) as resp:
                assert resp.status == 502
                assert "CRM unavailable" in await resp.text()
        async with client.get(s.url("/dashboard"), headers={"Accept": "application/json"}) as resp:
            assert resp.status == 502
            assert (await resp.json())["reason"] == "upstream_unavailable"
        async with client.get(s.url("/_gateway/health")) as resp:
            assert resp.status == 200
        async with client.get(s.url("/_gateway/ready")) as resp:
            assert resp.status == 503
        assert s.logs.events("upstream.failed")


async def test_slow_upstream_answers_504(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=OPEN, upstream={"read_timeout": 0.5}) as s:
        async with s.client().get(s.url("/slow?seconds=3")) as resp:
            assert resp.status == 504
        async with s.client().get(s.url("/health")) as resp:
            assert resp.status == 200


async def test_expect_100_continue_is_answered_then_the_body_is_forwarded(tmp_path: Path) -> None:
    """The server runs without aiohttp's router (server.DirectRunner), so it answers Expect itself."""
    body = b"name=x&value=" + b"y" * 5000
    async with stack(tmp_path, policy=OPEN) as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            writer.write(
                b"POST /echo HTTP/1.1\r\nHost: crm.example\r\nExpect: 100-continue\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
            )
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(body)
            await writer.drain()
            final = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert final.startswith(b"HTTP/1.1 200 ")
        [entry] = await s.crm_requests()
        assert entry["method"] == "POST" and entry["body_length"] == len(body)

        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        try:
            writer.write(b"POST /echo HTTP/1.1\r\nHost: crm.example\r\nExpect: teapot\r\n"
                         b"Content-Length: 3\r\nConnection: close\r\n\r\nabc")
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 417 ")
        assert len(await s.crm_requests()) == 1  # nothing more reached the CRM


async def test_ready_probes_the_crm_once_a_second_however_often_it_is_asked(tmp_path: Path) -> None:
    """Anyone may ask /_gateway/ready; a flood of asks must not become a flood of CRM connections."""
    accepted = 0

    def count(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    crm = await asyncio.start_server(count, "127.0.0.1", 0)
    crm_port = crm.sockets[0].getsockname()[1]
    try:
        async with stack(tmp_path, policy=OPEN, upstream={"url": f"http://127.0.0.1:{crm_port}"}) as s:
            client = s.client(HOME)  # ready answers any address (the lock-down does not apply to it)

            async def ready() -> int:
                async with client.get(s.url("/_gateway/ready")) as resp:
                    assert (await resp.json())["checks"]["upstream"] is True
                    return resp.status

            assert set(await asyncio.gather(*(ready() for _ in range(50)))) == {200}
            for _ in range(20):
                assert await ready() == 200
            assert accepted == 1
            await asyncio.sleep(1.1)
            assert await ready() == 200
            assert accepted == 2
    finally:
        crm.close()
        await crm.wait_closed()
