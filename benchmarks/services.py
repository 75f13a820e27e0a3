"""Start and stop what the benchmark measures: nginx, the demo CRM, the naive proxy, the gateway.

Every process is started in its own session (process group) and stopped by
signalling that group, so worker processes die with their parent. ``Services``
is a context manager: whatever happens, every process it started is stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def python_env(tree: Path = REPO, **extra: str) -> dict[str, str]:
    """The environment for a child that imports ``gateway`` from ``tree`` (this checkout by default)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


@dataclass
class Proc:
    """One started process (group) and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the group, SIGKILL after ``timeout``; then any of its processes still alive."""
        from procstat import tree

        if self.popen.poll() is not None:
            return
        members = tree(self.popen.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        for pid in members[1:]:  # a worker that outlived its parent: only if it is still ours
            if _pgid(pid) == self.popen.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _pgid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2 :].split()[2])


@dataclass
class Services:
    """Owns every process started for a run; ``with Services(dir) as s:`` stops them all at the end."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    def start(self, name: str, argv: list[str], port: int, *, env: dict[str, str] | None = None,
              cwd: Path | None = None, ready_path: str | None = "/", timeout: float = 60.0) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child holds it; closed when we drop it
        popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd or REPO,
                                 start_new_session=True)
        log.close()
        proc = Proc(name, popen, port, log_path)
        self.procs.append(proc)
        wait_ready(proc, ready_path, timeout)
        return proc

    # --- the things we run -------------------------------------------------------------

    def demo_crm(self) -> Proc:
        port = free_port()
        return self.start("demo-crm", [sys.executable, "-m", "gateway.demo_crm", "--host", HOST, "--port",
                                       str(port)], port, env=python_env(), ready_path="/health")

    def nginx_upstream(self) -> Proc:
        """nginx answering a small fixed response: the fast upstream."""
        port = free_port()
        prefix = self._nginx_prefix("nginx-upstream")
        server = f"""
    server {{
        listen {HOST}:{port};
        keepalive_requests 1000000;
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}"""
        return self._nginx("nginx-upstream", prefix, port, server)

    def nginx_proxy(self, upstream_port: int, allowed: list[str], name: str) -> Proc:
        """nginx as a reverse proxy with allow/deny lists: what ops would deploy instead."""
        port = free_port()
        prefix = self._nginx_prefix(name)
        rules = "\n".join(f"        allow {net};" for net in allowed)
        server = f"""
    upstream backend {{
        server {HOST}:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{port};
        keepalive_requests 1000000;
{rules}
        deny all;
        client_max_body_size 0;
        # Streaming both ways with 64 KiB buffers (the gateway's chunk size); nginx's default
        # 4-8 KiB buffers halve its large-download throughput here.
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_buffer_size 64k;
        proxy_buffers 4 64k;
        proxy_busy_buffers_size 128k;
        client_body_buffer_size 64k;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 60s;
        }}
    }}"""
        return self._nginx(name, prefix, port, server)

    def naive_proxy(self, upstream_port: int, name: str, python: str = sys.executable) -> Proc:
        port = free_port()
        return self.start(name, [python, str(BENCH / "naive_proxy.py"), str(port),
                                 f"http://{HOST}:{upstream_port}"], port, env=python_env(), ready_path=None)

    def redis(self) -> Proc:
        """A redis-server for the gateways with ``session.store: redis`` (what several workers need)."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(self._dir("redis")), "--daemonize", "no"]
        return self.start("redis", argv, port, ready_path=None)

    def gateway(self, config: Path, port: int, workers: int, name: str, tree: Path = REPO,
                python: str = sys.executable) -> Proc:
        """``serve`` from ``tree`` (another checkout, to compare a change: benchmarks/compare.py),
        run by ``python`` (another interpreter's virtualenv, with the project's dependencies)."""
        env = python_env(tree)
        argv = [python, "-m", "gateway", "serve", "-c", str(config), "--drain-timeout", "2"]
        if workers > 1:
            argv += ["--workers", str(workers)]
            # serve sets one itself (and leaves it behind); ours is removed with the work directory.
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self._dir(f"{name}-metrics"))
        proc = self.start(name, argv, port, env=env, cwd=tree, ready_path="/_gateway/health", timeout=180.0)
        if workers > 1:
            wait_workers(proc, workers)
        return proc

    # --- helpers -----------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _nginx_prefix(self, name: str) -> Path:
        prefix = self._dir(name)
        prefix.chmod(0o777)  # nginx workers run as nobody when the master is root
        return prefix

    def _nginx(self, name: str, prefix: Path, port: int, servers: str) -> Proc:
        temp = "\n".join(
            f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
{servers}
}}
"""
        (prefix / "nginx.conf").write_text(conf)
        return self.start(name, ["nginx", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
                          port, ready_path=None)


def wait_ready(proc: Proc, path: str | None, timeout: float) -> None:
    """Until the port accepts (and ``path`` answers), or the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_text()[-3000:]}")
        try:
            with socket.create_connection((HOST, proc.port), timeout=0.5):
                pass
            if path is not None:
                with urllib.request.urlopen(f"http://{HOST}:{proc.port}{path}", timeout=2) as resp:
                    resp.read()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready on port {proc.port} after {timeout:.0f}s:\n{proc.log_text()[-3000:]}")


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def _holds_socket(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def wait_workers(proc: Proc, workers: int, timeout: float = 180.0) -> None:
    """``serve --workers N``: until N worker processes each hold a listening socket on the port.

    (With ``logging.level: warning`` the workers' ``gateway.started`` lines are not written.)
    """
    from procstat import children

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.log_text()[-3000:]}")
        inodes = _listening_inodes(proc.port)
        kids = children(proc.pid)
        if len(kids) >= workers and all(_holds_socket(k, inodes) for k in kids):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name}: {workers} workers did not start:\n{proc.log_text()[-3000:]}")
