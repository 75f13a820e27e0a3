"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import free_port


@pytest.fixture
def crm_port() -> Iterator[int]:
    """The demo CRM in a process of its own."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway.demo_crm", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("demo CRM did not start") from None
            time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)
