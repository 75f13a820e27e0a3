"""Stream one large body down (``/download/large``) and up (``/upload``) through a proxy with curl.

Reports MB/s (10^6 bytes per second of curl's total time) and how much the
proxy's resident memory grew while the body passed: the kernel's peak-RSS mark
(VmHWM) is reset just before, read just after, and cross-checked against RSS
sampled every 20 ms, all summed over the proxy's processes.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from procstat import TreeSample, reset_tree_peak


class RssWatch:
    """Samples a process tree's RSS in a thread until stopped; the highest sum seen."""

    def __init__(self, pid: int | None, interval: float = 0.02) -> None:
        self.pid, self.interval = pid, interval
        self.highest = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and self.pid is not None:
            self.highest = max(self.highest, TreeSample.read(self.pid).rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def stream(*, url: str, direction: str, size: int, proxy_pid: int | None, cookie: str | None,
           workdir: Path, timeout: float = 600.0) -> dict[str, Any]:
    """One transfer of ``size`` bytes; ``direction`` is ``down`` or ``up``."""
    body_path = workdir / f"stream-{direction}.out"
    argv = ["curl", "-sS", "--noproxy", "*", "-o", str(body_path), "-w", "%{http_code} %{time_total}",
            "-H", "Expect:"]
    if cookie:
        argv += ["-H", f"Cookie: {cookie}"]
    if direction == "down":
        argv.append(f"{url}/download/large?size={size}")
    else:
        argv += ["-X", "POST", "-H", "Content-Type: application/octet-stream", "-T", "-", f"{url}/upload"]
    before = TreeSample.read(proxy_pid) if proxy_pid else None
    if proxy_pid:
        reset_tree_peak(proxy_pid)
    started = time.monotonic()
    with RssWatch(proxy_pid) as watch:
        if direction == "down":
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        else:
            with subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE) as source:
                done = subprocess.run(argv, stdin=source.stdout, capture_output=True, text=True, timeout=timeout,
                                      check=False)
                assert source.stdout is not None
                source.stdout.close()
    wall = time.monotonic() - started
    after = TreeSample.read(proxy_pid) if proxy_pid else None
    code, _, total = done.stdout.strip().partition(" ")
    seconds = float(total) if total else wall
    ok = done.returncode == 0 and code == "200"
    if ok and direction == "down":
        ok = body_path.stat().st_size == size
    elif ok:
        try:
            ok = json.loads(body_path.read_text()).get("bytes") == size
        except ValueError:
            ok = False
    body_path.unlink(missing_ok=True)
    result: dict[str, Any] = {
        "direction": direction,
        "bytes": size,
        "ok": ok,
        "status": code,
        "seconds": seconds,
        "mb_per_s": size / seconds / 1e6 if ok and seconds > 0 else None,
    }
    if not ok:
        result["error"] = done.stderr.strip()[-500:]
    if before is not None and after is not None:
        growth = max(after.peak, watch.highest) - before.rss
        result.update(rss_before_mib=before.rss / 2**20, rss_growth_mib=max(growth, 0) / 2**20,
                      cpu_s=after.cpu - before.cpu)
    return result
