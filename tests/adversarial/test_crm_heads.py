"""Odd response heads from the CRM, written byte by byte by a raw upstream (review 7)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.server import Server
from tests.adversarial.support import raw_request, send_raw, status_of
from tests.e2e.harness import main_config, write_config


@asynccontextmanager
async def gateway_before(directory: Path, answer: bytes) -> AsyncIterator[int]:
    """A gateway (no rules) in front of a CRM that answers every request with ``answer``, then closes."""
    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"\r\n\r\n" not in data and (chunk := await reader.read(65536)):
            data += chunk
        writer.write(answer)
        await writer.drain()
        writer.close()

    crm = await asyncio.start_server(upstream, "127.0.0.1", 0)
    path = write_config(directory, main_config(crm.sockets[0].getsockname()[1]), {})
    server = Server(config_path=path, config=load_config(path), watch=False, drain_timeout=1.0)
    await server.start()
    try:
        assert server.port is not None
        yield server.port
    finally:
        assert server.runner is not None
        await server.runner.cleanup()
        crm.close()


def head_lines(response: bytes, name: bytes) -> list[bytes]:
    head = response.split(b"\r\n\r\n", 1)[0]
    return [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")[1:] if line.lower().startswith(name + b":")]


async def test_a_crm_redirect_is_not_turned_off_site_by_a_dropped_byte(tmp_path: Path) -> None:
    """'/<0xFF>/evil.example/' is a same-site path. Header bytes were read with surrogateescape, and
    aiohttp's writer drops lone surrogates: the browser got 'Location: //evil.example/', off site."""
    answer = b"HTTP/1.1 302 Found\r\nLocation: /\xff/evil.example/\r\nContent-Length: 0\r\n\r\n"
    async with gateway_before(tmp_path, answer) as port:
        response = await send_raw(port, raw_request("GET", "/x"))
        assert status_of(response) == 302
        assert head_lines(response, b"location") == ["/ÿ/evil.example/".encode()]


@pytest.mark.parametrize(("sent", "received"), [
    ('attachment; filename="Müller.csv"'.encode(), 'attachment; filename="Müller.csv"'.encode()),  # UTF-8: as sent
    (b'attachment; filename="M\xfcller.csv"', 'attachment; filename="Müller.csv"'.encode()),  # Latin-1: re-encoded
])
async def test_a_header_that_is_not_ascii_loses_no_byte(tmp_path: Path, sent: bytes, received: bytes) -> None:
    """RFC 9110 obs-text, e.g. a legacy CRM's Latin-1 file name: 'M<0xFC>ller' arrived as 'Mller'.
    Now UTF-8 passes as it is, and other bytes as the UTF-8 of their Latin-1 reading (no byte lost)."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Disposition: " + sent + b"\r\nContent-Length: 2\r\n\r\nok"
    async with gateway_before(tmp_path, answer) as port:
        response = await send_raw(port, raw_request("GET", "/x"))
        assert status_of(response) == 200
        assert head_lines(response, b"content-disposition") == [received]


HEADS = {
    "Content-Length and chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2\r\nok\r\n0\r\n\r\n",
    "two Content-Lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
    "103 with a cookie": b"HTTP/1.1 103 Early Hints\r\nSet-Cookie: crmgw_session=x\r\nLink: </a>\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "a cookie in a chunked trailer": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Set-Cookie\r\n\r\n"
                                     b"2\r\nok\r\n0\r\nSet-Cookie: crmgw_session=x\r\n\r\n",
    "Connection naming Set-Cookie": b"HTTP/1.1 200 OK\r\nConnection: Set-Cookie, X-A\r\nSet-Cookie: crmgw_session=x\r\n"
                                    b"X-A: 1\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-A: 1\r\n Set-Cookie: crmgw_session=x\r\nContent-Length: 2\r\n\r\nok",
    "bare LF": b"HTTP/1.1 200 OK\nSet-Cookie: crmgw_session=x\nContent-Length: 2\n\nok",
    "CR in a value": b"HTTP/1.1 200 OK\r\nX-A: 1\rSet-Cookie: crmgw_session=x\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("answer", list(HEADS.values()), ids=list(HEADS))
async def test_an_odd_crm_head_sets_no_gateway_cookie_and_is_framed_once(tmp_path: Path, answer: bytes) -> None:
    async with gateway_before(tmp_path, answer) as port:
        response = await send_raw(port, raw_request("GET", "/x"))
        head = response.split(b"\r\n\r\n", 1)[0].lower()
        assert status_of(response) in (200, 502)
        assert b"crmgw_session" not in head
        assert not (b"transfer-encoding:" in head and b"content-length:" in head)
