"""A real ``redis-server`` on a free loopback port, for tests that need a shared store.

The binary must be installed (CI installs the Debian package ``redis-server``):
a missing binary is an error, never a skip, so a green run always means the
Redis code paths really ran. Persistence is off (``--save '' --appendonly no``)
and the working directory is a temporary folder, so nothing is left behind.

Use it as a context manager::

    with RedisServer() as server:
        state = RedisState(server.url)

or as a pytest fixture made by :func:`redis_server_fixture`::

    redis_server = redis_server_fixture(scope="module")

``stop()`` and ``start()`` may be called in between to simulate an outage; a
restart reuses the same port, as a restarted Redis in production would.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.support.certs import self_signed

START_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start."""


def find_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerError(
            "redis-server is not installed (tests need a real Redis: apt-get install redis-server)"
        )
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_ping(port: int, timeout: float = 0.5) -> bool:
    """Speak RESP by hand: the helper must not depend on the client code under test."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process in a temporary directory; start/stop/restart on one port."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = find_redis_server()
        self.port = port or free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="crmgw-redis-"))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = self._tmp / "redis.log"
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._tmp),
                "--logfile", str(log),
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RedisServerError(
                    f"redis-server exited with {self._proc.returncode} on port {self.port}:\n{text}"
                )
            if answers_ping(self.port):
                return
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer PING on port {self.port} in {START_TIMEOUT}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the port is free again when this returns."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers, as in a partition."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def flushall(self) -> None:
        """Empty the server between tests that share it (raw RESP, like :func:`answers_ping`)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            reply = sock.recv(64)
        if not reply.startswith(b"+OK"):
            raise RedisServerError(f"FLUSHALL answered {reply!r}")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def redis_server_fixture(scope: Any = "module") -> Callable[..., Iterator[RedisServer]]:
    """A pytest fixture yielding a running :class:`RedisServer`; assign it to a name in a test module."""

    @pytest.fixture(scope=scope)
    def redis_server() -> Iterator[RedisServer]:
        with RedisServer() as server:
            yield server

    return redis_server


class TlsRedisServer:
    """A redis-server that speaks only TLS (``rediss://``), with a self-signed certificate."""

    def __init__(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="crmgw-redis-tls-"))
        self.port = free_port()
        cert, key = self_signed(self._tmp, "127.0.0.1")
        self._proc = subprocess.Popen(
            [find_redis_server(), "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self._tmp), "--tls-cert-file", str(cert),
             "--tls-key-file", str(key), "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
             "--logfile", str(self._tmp / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (self._tmp / "redis.log").read_text(errors="replace")[-2000:]
                    self.close()
                    raise RedisServerError(f"redis-server with TLS did not start:\n{log}") from None
                time.sleep(0.05)

    def url(self, port: int | None = None) -> str:
        """The URL of this server, or of a relay in front of it at ``port``."""
        return f"rediss://127.0.0.1:{port or self.port}/0?ssl_cert_reqs=none"

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> TlsRedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
