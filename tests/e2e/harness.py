"""Real gateway + real demo CRM on loopback ports, for end-to-end tests.

``Stack`` runs both in the test's event loop (fast, and the gateway is the same
code ``serve`` runs); ``GatewayProcess`` runs ``python -m gateway serve`` as a
child process for what needs a process of its own (signals, memory, workers).
Clients are made different peers by binding them to other loopback addresses:
127.0.0.1 is the office, 127.0.0.2 the warehouse, 127.0.0.3+ outside.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from gateway import demo_crm, logs
from gateway.config import load_config
from gateway.server import Server

OFFICE = "127.0.0.1"
WAREHOUSE = "127.0.0.2"
HOME = "127.0.0.3"
ABROAD = "127.0.0.4"

# The example policy of DESIGN.md §2 in loopback terms (tests name jim, bob, alice, pat).
POLICY: dict[str, Any] = {
    "channels": {"mobile": {"user_agents": ["^AcmeCRM-Mobile/"], "paths": ["/api/mobile/**", "/login"]}},
    "functions": {
        "login": {"paths": ["/login"], "public": True},
        "static": {"paths": ["/static/**", "/favicon.ico"], "public": True},
        "clock-in": {"paths": ["/timeclock/clock-in", "/api/mobile/timeclock/clock-in"], "methods": ["POST"]},
        "export": {"paths": ["/**/export", "/reports/*/csv"]},
        "billing": {"paths": ["/billing/**", "/invoices/**"]},
    },
    "defaults": {
        "ip_lockdown": True,
        "allowed_networks": [OFFICE, WAREHOUSE, "::1"],
        "mobile_any_ip": True,
        "require_2fa": False,
    },
    "groups": {"warehouse": ["jim", "bob"], "sales": ["alice"], "project-managers": ["pat"]},
    "users": {
        "alice": {
            "overrides": [
                {"ip_lockdown": False, "reason": "Travels to client sites", "expires": "2099-12-31"},
            ]
        }
    },
    "rules": [
        {"title": "Nobody clocks in from outside", "action": "block", "function": "clock-in"},
        {
            "title": "Warehouse clocks in at the warehouse",
            "action": "allow",
            "function": "clock-in",
            "networks": [WAREHOUSE],
            "groups": ["warehouse"],
        },
        {"title": "PMs stay out of billing", "action": "block", "function": "billing",
         "groups": ["project-managers"]},
        {"title": "No exports from the mobile app", "action": "block", "function": "export",
         "channel": "mobile"},
    ],
}


def main_config(crm_port: int, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstream": {"url": f"http://127.0.0.1:{crm_port}", "connect_timeout": 2, "read_timeout": 5},
        "session": {"cookie_secure": False, "secret_key_file": "secret.key"},
        "login": {
            "path": "/login",
            "method": "POST",
            "username_field": "username",
            "success": {"status": [302, 303], "set_cookie": "crm_session"},
            "logout_paths": ["/logout"],
            "upstream_session_cookie": "crm_session",
        },
        "logging": {"format": "json", "level": "info"},
        "policy_files": ["policy.yaml"],
    }
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        elif isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def write_config(directory: Path, main: dict[str, Any], policy: dict[str, Any] | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if policy is not None:
        (directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(main, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LogBuffer(io.StringIO):
    """Captures the gateway's JSON log lines."""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.getvalue().splitlines():
            if not line.startswith("{"):
                continue  # a traceback or a library's own plain-text line
            try:
                event = json.loads(line)
            except ValueError:
                raise AssertionError(f"torn log line (two writers interleaved?): {line!r}") from None
            if name is None or event.get("event") == name:
                out.append(event)
        return out


@dataclass
class Stack:
    directory: Path
    config_path: Path
    crm_port: int
    crm_runner: web.AppRunner
    server: Server
    logs: LogBuffer
    _clients: list[aiohttp.ClientSession] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def crm_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.crm_port}{path}"

    def client(self, source: str = OFFICE, **kwargs: Any) -> aiohttp.ClientSession:
        """A client whose connections come from the given loopback address."""
        connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=kwargs.pop("force_close", False))
        kwargs.setdefault("cookie_jar", aiohttp.CookieJar(unsafe=True))
        session = aiohttp.ClientSession(connector=connector, **kwargs)
        self._clients.append(session)
        return session

    async def crm_requests(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as direct, direct.get(self.crm_url("/__crm/requests")) as resp:
            data: list[dict[str, Any]] = await resp.json()
            return data

    async def crm_logins(self) -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as direct, direct.get(self.crm_url("/__crm/logins")) as resp:
            data: list[dict[str, Any]] = await resp.json()
            return data

    async def reset_crm(self) -> None:
        async with aiohttp.ClientSession() as direct, direct.post(self.crm_url("/__crm/reset")):
            pass

    def rewrite_policy(self, policy: dict[str, Any]) -> None:
        (self.directory / "policy.yaml").write_text(yaml.safe_dump(policy, sort_keys=False))


@asynccontextmanager
async def gateway_for(
    directory: Path, crm_port: int, policy: dict[str, Any], *, drain_timeout: float = 2.0, **main_overrides: Any
) -> AsyncIterator[tuple[Server, Path, LogBuffer]]:
    """The gateway in this event loop in front of the CRM on ``crm_port``, its logs captured; stopped at the end."""
    buffer = LogBuffer()
    logs.configure(level="debug", fmt="json", stream=buffer)
    path = write_config(directory, main_config(crm_port, **main_overrides), policy)
    server = Server(config_path=path, config=load_config(path), watch=False, drain_timeout=drain_timeout)
    await server.start()
    try:
        yield server, path, buffer
    finally:
        assert server.runner is not None
        await server.runner.cleanup()


@asynccontextmanager
async def stack(
    directory: Path,
    *,
    policy: dict[str, Any] | None = None,
    crm_users: dict[str, str] | None = None,
    **main_overrides: Any,
) -> AsyncIterator[Stack]:
    """Demo CRM + gateway in this event loop; config files written to ``directory``."""
    crm_runner, crm_port = await demo_crm.start("127.0.0.1", 0, **({"users": crm_users} if crm_users else {}))
    try:
        async with gateway_for(directory, crm_port, POLICY if policy is None else policy,
                               **main_overrides) as (server, path, buffer):
            result = Stack(directory, path, crm_port, crm_runner, server, buffer)
            try:
                yield result
            finally:
                for client in result._clients:
                    await client.close()
    finally:
        await crm_runner.cleanup()


class GatewayProcess:
    """``python -m gateway serve`` in a child process, its stdout (JSON logs) kept in a file."""

    def __init__(self, config_path: Path, *, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.config_path = config_path
        self.log_path = config_path.parent / "gateway.log"
        self.extra_args = extra_args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, port: int, timeout: float = 15.0) -> None:
        self.port = port
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "-c", str(self.config_path), *self.extra_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"gateway did not start listening on {port}:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        buffer = LogBuffer(self.log_text())
        return buffer.events(name)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        return code

    def rss_bytes(self) -> int:
        assert self.proc is not None
        return rss_of(self.proc.pid)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")
