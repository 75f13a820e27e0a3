"""What /proc says about a process tree: CPU seconds, resident memory, its peak.

Everything the benchmark reports about a proxy's cost comes from here, summed
over the process and its descendants (the worker processes of ``serve
--workers 2``, nginx's worker), so a multi-process proxy is charged for all of
its processes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all threads' child lists)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            out.extend(int(x) for x in f.read().split())
    return out


def tree(pid: int) -> list[int]:
    """``pid`` and every descendant, parents first."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        out.append(current)
        todo.extend(children(current))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return 0.0
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """VmHWM: the highest resident set since start or since :func:`reset_peak`."""
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, ``echo 5 > clear_refs``)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class TreeSample:
    """One reading of a whole process tree."""

    pids: tuple[int, ...]
    cpu: float  # seconds, summed
    rss: int  # bytes, summed
    peak: int  # bytes, summed VmHWM

    @classmethod
    def read(cls, pid: int) -> TreeSample:
        pids = tuple(tree(pid))
        return cls(
            pids=pids,
            cpu=sum(cpu_seconds(p) for p in pids),
            rss=sum(rss_bytes(p) for p in pids),
            peak=sum(peak_rss_bytes(p) for p in pids),
        )


def reset_tree_peak(pid: int) -> bool:
    return all([reset_peak(p) for p in tree(pid)])


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        a, b, c = f.read().split()[:3]
    return float(a), float(b), float(c)
