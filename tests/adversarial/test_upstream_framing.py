"""Upstream framing of compressed request bodies: a smuggling hole in the server/proxy (NOT committed by helper-7).

aiohttp's server decodes ``Content-Encoding: gzip``/``deflate`` request bodies by
default (``auto_decompress``), and the proxy forwards that decoded stream under the
client's own ``Content-Encoding`` and ``Content-Length`` headers. The CRM then reads
the compressed length's worth of the decoded bytes as the body and the rest as the
next request on the pooled connection: a request the gateway never judged. These
tests capture the exact bytes on the upstream wire with a raw socket server.

Fix belongs to gateway/app.py (``handler_args={"auto_decompress": False}``: a
proxy forwards bodies as received) and/or gateway/proxy.py.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.server import Server
from tests.adversarial.support import raw_request, send_raw, statuses
from tests.e2e.harness import main_config, write_config

HIDDEN = b"GET /billing/settings HTTP/1.1\r\nHost: crm.example\r\n\r\n"
REQUEST_LINE = re.compile(rb"(?m)^[A-Z]+ /\S* HTTP/1\.[01]\r$")


@asynccontextmanager
async def capturing_gateway(directory: Path) -> AsyncIterator[tuple[int, bytearray]]:
    """A gateway (no rules) in front of a raw upstream that records every byte it receives."""
    wire = bytearray()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answered = False
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 1.0)
            except TimeoutError:
                break
            if not chunk:
                break
            wire.extend(chunk)
            if not answered and b"\r\n\r\n" in wire:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                answered = True
        writer.close()

    capture = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = capture.sockets[0].getsockname()[1]
    path = write_config(directory, main_config(port), {})
    server = Server(config_path=path, config=load_config(path), watch=False, drain_timeout=1.0)
    await server.start()
    try:
        assert server.port is not None
        yield server.port, wire
    finally:
        assert server.runner is not None
        await server.runner.cleanup()
        capture.close()


def split_request(wire: bytes) -> tuple[int, bytes]:
    """The declared Content-Length of the first request upstream, and every byte after its head."""
    head, _, rest = wire.partition(b"\r\n\r\n")
    found = re.search(rb"(?mi)^content-length: *([0-9]+)\r?$", head)
    return (int(found.group(1)) if found else -1), rest


PAYLOAD = b"x" * 10 + HIDDEN
BODIES = [
    ("gzip", gzip.compress(PAYLOAD, mtime=0)),
    ("deflate", zlib.compress(PAYLOAD)),
    ("gzip", gzip.compress(b"a" * 4000 + HIDDEN, mtime=0)),
]


@pytest.mark.parametrize(("encoding", "body"), BODIES, ids=[
    "gzip: decoded body shorter than the declared length (the CRM waits for bytes of the next request)",
    "deflate: the same",
    "gzip: decoded body longer than the declared length (cut short, the CRM gets a corrupt body)",
])
async def test_a_compressed_body_is_forwarded_as_received_or_refused(tmp_path: Path, encoding: str,
                                                                     body: bytes) -> None:
    async with capturing_gateway(tmp_path) as (port, wire):
        response = await send_raw(port, raw_request("POST", "/echo", [("Content-Encoding", encoding)], body),
                                  timeout=1.5)
        await asyncio.sleep(0.2)
        if statuses(response)[:1] in ([400], [415]):
            assert wire == b""
            return
        assert len(REQUEST_LINE.findall(bytes(wire))) == 1, bytes(wire).decode("latin-1")
        declared, rest = split_request(bytes(wire))
        assert declared == len(rest), f"Content-Length {declared} but {len(rest)} body bytes upstream"
        assert rest == body, "the CRM did not get the body the client sent"
