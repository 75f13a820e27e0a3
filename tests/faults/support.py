"""What the fault tests share: a gateway process to hurt, and its footprint before and after.

A fault is survived when the gateway answers what the contract says, keeps
serving others, and gives back what the fault cost it: the open file
descriptors return to their baseline and the resident memory to near it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.e2e.harness import OFFICE, GatewayProcess, free_port, main_config, open_fds, write_config

MiB = 1024 * 1024


def start_gateway(directory: Path, upstream_url: str, *, policy: dict[str, Any] | None = None,
                  extra_args: tuple[str, ...] = (), **overrides: Any) -> GatewayProcess:
    """``crm-gateway serve`` in a child process in front of ``upstream_url`` (default policy: none)."""
    port = free_port()
    upstream = {"url": upstream_url, "connect_timeout": 1, "read_timeout": 1, **overrides.pop("upstream", {})}
    main = main_config(0, listen={"host": "127.0.0.1", "port": port}, upstream=upstream, **overrides)
    path = write_config(directory, main, {} if policy is None else policy)
    process = GatewayProcess(path, extra_args=extra_args)
    process.start(port)
    return process


@dataclass(frozen=True)
class Footprint:
    """A gateway process's open file descriptors and resident memory at one moment."""

    fds: int
    rss: int

    @classmethod
    def of(cls, gw: GatewayProcess) -> Footprint:
        assert gw.proc is not None
        return cls(fds=open_fds(gw.proc.pid), rss=gw.rss_bytes())

    async def assert_returned(self, gw: GatewayProcess, what: str, *, fd_slack: int = 0,
                              rss_slack: int = 8 * MiB, timeout: float = 10.0) -> Footprint:
        """Wait until the process is back to this footprint (within the slack), else fail naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            now = Footprint.of(gw)
            if now.fds <= self.fds + fd_slack and now.rss <= self.rss + rss_slack:
                return now
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"after {what}: {now.fds} fds (baseline {self.fds}), RSS {now.rss / MiB:.1f} MiB "
                    f"(baseline {self.rss / MiB:.1f} MiB)"
                )
            await asyncio.sleep(0.1)


@dataclass(frozen=True)
class Outcome:
    """What a client saw: a status and a whole body, or a connection that broke (``error``)."""

    status: int | None
    request_id: str | None
    body: bytes = b""
    error: str | None = None
    seconds: float = 0.0


async def fetch(port: int, path: str, *, source: str = OFFICE, headers: dict[str, str] | None = None,
                timeout: float = 15.0) -> Outcome:
    """One GET on a fresh connection (so nothing lingers in a client pool), read to the end."""
    started = time.monotonic()
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    status = request_id = None
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                         max_field_size=64 * 1024) as c:
            async with c.get(f"http://127.0.0.1:{port}{path}", headers=headers, allow_redirects=False) as resp:
                status, request_id = resp.status, resp.headers.get("X-Request-ID")
                body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(status, request_id, error=type(exc).__name__, seconds=time.monotonic() - started)
    return Outcome(status, request_id, body, seconds=time.monotonic() - started)
