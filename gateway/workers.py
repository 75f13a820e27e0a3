"""``serve --workers N``: a small parent that runs N gateway processes on one port.

The parent never loads the policy (its memory would grow with the rule count for
nothing): a throwaway child checks the whole config before any worker starts.

Each worker binds the port with SO_REUSEPORT, so the kernel spreads connections
across them. The parent forwards SIGHUP (reload) and SIGTERM/SIGINT (drain) to
every worker, restarts a worker that dies unexpectedly, and exits 0 once all
have drained.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from types import FrameType
from typing import Literal

from gateway.logs import get_logger

log = get_logger("workers")


def _serve_command(config: str, *options: str) -> list[str]:
    """``crm-gateway serve`` with this interpreter, for a child process."""
    return [sys.executable, "-m", "gateway", "serve", "-c", config, *options]


def validation_command(config: str) -> list[str]:
    return _serve_command(config, "--validate-only")


def validate(config: str) -> Literal["valid", "invalid", "stopped"]:
    """Load the whole config once in a child process, as a worker would; it prints any problem.

    At 100,000 rules that takes seconds: a SIGTERM or SIGINT meanwhile (a deploy rolled
    back, Ctrl-C) stops the child and answers "stopped", so the parent exits 0 at once
    instead of dying by the signal with its child left running.
    """
    stopped = False
    check: subprocess.Popen[bytes] | None = None

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopped
        stopped = True
        if check is not None:
            check.terminate()

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        check = subprocess.Popen(validation_command(config))  # noqa: S603 - our own interpreter and module
        if stopped:  # the signal came before there was a child to stop
            check.terminate()
        code = check.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if stopped:
        return "stopped"
    return "valid" if code == 0 else "invalid"


def _spawn(config: str, index: int, count: int, drain_timeout: float, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        _serve_command(config, "--reuse-port", "--worker-index", str(index), "--worker-count", str(count),
                       "--drain-timeout", str(drain_timeout)),
        env=env,
    )


def run_workers(config: str, *, workers: int, drain_timeout: float) -> int:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return _supervise(config, workers, drain_timeout, dict(os.environ))
    # The workers' metric files live as long as the parent: removed when it exits.
    with tempfile.TemporaryDirectory(prefix="crmgw-metrics-") as metrics_dir:
        return _supervise(config, workers, drain_timeout, {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir})


def _supervise(config: str, workers: int, drain_timeout: float, env: dict[str, str]) -> int:
    children = {i: _spawn(config, i, workers, drain_timeout, env) for i in range(workers)}
    stopping = False

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    log.info("workers.started", workers=workers, pids=[c.pid for c in children.values()])
    restarts: list[float] = []
    while True:
        time.sleep(0.2)
        alive = {i: c for i, c in children.items() if c.poll() is None}
        if stopping:
            if not alive:
                break
            continue
        for index, child in children.items():
            if child.poll() is None:
                continue
            log.error("workers.died", worker=index, pid=child.pid, returncode=child.returncode)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 5 * workers:
                log.error("workers.giving_up", reason="workers keep dying")
                forward(signal.SIGTERM, None)
                stopping = True
                break
            children[index] = _spawn(config, index, workers, drain_timeout, env)
    log.info("workers.stopped")
    return 0
