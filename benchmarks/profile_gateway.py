"""Profile a 1-worker gateway under wrk load with py-spy; print where its CPU goes.

    python benchmarks/profile_gateway.py [--upstream nginx|crm] [--seconds 20] [--native]

Starts the upstream and ``serve`` with the benchmark config (example policy +
1,000 generated rules, authenticated session cookie, ``logging.level:
warning``), drives it with ``wrk -t1 -c50`` and records it with ``py-spy record``
twice: collapsed stacks (``--format raw``, analysed here: self and cumulative
time per function, and per part of the code) and a flame graph SVG. Results go
to ``benchmarks/results/profile-<upstream>.{txt,svg}``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchconfig
from services import BENCH, HOST, REPO, Services, free_port

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
_LINE = re.compile(r":\d+\)$")

# Where a frame's file lives, in the words of the report.
AREAS = (
    ("gateway/filters/", "gateway filters"),
    ("gateway/policy/", "gateway policy engine"),
    ("gateway/proxy.py", "gateway proxy"),
    ("gateway/chain.py", "gateway chain"),
    ("gateway/sessions.py", "gateway sessions"),
    ("gateway/", "gateway (other)"),
    ("aiohttp_session", "aiohttp-session"),
    ("cryptography", "cryptography (Fernet)"),
    ("structlog", "structlog"),
    ("prometheus_client", "prometheus_client"),
    ("aiohttp/client", "aiohttp client"),
    ("aiohttp/connector", "aiohttp client"),
    ("aiohttp/web", "aiohttp server"),
    ("aiohttp/", "aiohttp (other)"),
    ("multidict", "multidict/yarl"),
    ("yarl", "multidict/yarl"),
    ("asyncio", "asyncio/uvloop"),
    ("uvloop", "asyncio/uvloop"),
)


def frame_name(frame: str) -> str:
    """``handle (gateway/chain.py:40)`` -> ``handle (gateway/chain.py)``; paths shortened to the package."""
    frame = _LINE.sub(")", frame)
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in frame:
            head, _, tail = frame.partition("(")
            frame = head + "(" + tail.split(marker, 1)[1]
    return frame


def area_of(frame: str) -> str | None:
    for marker, area in AREAS:
        if marker in frame:
            return area
    return None


def analyse(raw: str, top: int = 30) -> str:
    """Self and cumulative sample shares from py-spy's collapsed stacks."""
    self_time: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    areas_self: Counter[str] = Counter()
    areas_cumulative: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_time[frames[-1]] += count
        for name in set(frames):
            cumulative[name] += count
        leaf_area = next((a for a in (area_of(f) for f in reversed(frames)) if a), "other")
        areas_self[leaf_area] += count
        for area in {a for a in (area_of(f) for f in frames) if a}:
            areas_cumulative[area] += count
    out = [f"{total} samples"]

    def block(title: str, counter: Counter[str], n: int) -> None:
        out.append(f"\n{title}")
        for name, count in counter.most_common(n):
            out.append(f"  {100 * count / total:5.1f}%  {name}")

    block("Self time by area (innermost frame that belongs to an area)", areas_self, 20)
    block("Cumulative time by area (any frame of the stack)", areas_cumulative, 20)
    block(f"Top {top} functions by self time", self_time, top)
    block(f"Top {top} functions by cumulative time", cumulative, top)
    ours = Counter({name: count for name, count in cumulative.items()
                    if ("gateway/" in name and "__main__" not in name and "cli.py" not in name)
                    or "aiohttp_session" in name or "prometheus_client" in name})
    block("The gateway's own functions (and aiohttp-session, prometheus_client) by cumulative time", ours, top)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", choices=("nginx", "crm"), default="nginx")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include native (C) frames")
    parser.add_argument("--out", default=str(BENCH / "results"), help="directory for profile-*.txt/svg")
    parser.add_argument("--analyse", metavar="RAW", help="only analyse an existing py-spy raw file")
    parser.add_argument("--tree", type=Path, default=REPO, help="source tree to run serve from")
    parser.add_argument("--name", default="", help="suffix for the output files")
    args = parser.parse_args(argv)
    if args.analyse:
        print(analyse(Path(args.analyse).read_text()))
        return 0
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"profile-{args.upstream}" + ("-native" if args.native else "") + (f"-{args.name}" if args.name else "")
    workdir = Path(tempfile.mkdtemp(prefix="crmgw-profile-"))
    try:
        with Services(workdir) as services:
            upstream = services.nginx_upstream() if args.upstream == "nginx" else services.demo_crm()
            port = free_port()
            config = benchconfig.write_config(workdir / "gw", port=port, upstream_port=upstream.port,
                                              rules=1000)
            gateway = services.gateway(config, port, 1, "gateway", tree=args.tree.resolve())
            cookie = (benchconfig.minted_cookie(config) if args.upstream == "nginx"
                      else asyncio.run(benchconfig.login_cookie(port)))
            url = f"http://{HOST}:{port}/health"
            load = subprocess.Popen(["wrk", "-t1", "-c50", f"-d{2 * args.seconds + 15}s", "-H",
                                     f"Cookie: {cookie}", url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                time.sleep(3)  # warm up
                common = [PY_SPY, "record", "--pid", str(gateway.pid), "--duration", str(args.seconds),
                          "--rate", str(args.rate)] + (["--native"] if args.native else [])
                raw_path = out_dir / f"{stem}.raw.txt"
                subprocess.run([*common, "--format", "raw", "-o", str(raw_path)], check=True,
                               capture_output=True)
                subprocess.run([*common, "--format", "flamegraph", "-o", str(out_dir / f"{stem}.svg")],
                               check=True, capture_output=True)
            finally:
                load.terminate()
                wrk_out = load.communicate(timeout=30)[0].decode(errors="replace")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = analyse(raw_path.read_text())
    header = (f"py-spy profile of `serve` (1 worker, {args.tree}) under wrk -t1 -c50, upstream {args.upstream}, "
              f"{args.seconds} s at {args.rate} Hz{' with native frames' if args.native else ''}\n")
    (out_dir / f"{stem}.txt").write_text(header + report + "\n")
    print(header + report)
    print("\n(wrk while profiling)\n" + wrk_out[-600:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
