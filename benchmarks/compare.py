"""Compare gateway builds A/B: the same benchmark against ``serve`` from two (or more) source trees.

    python benchmarks/compare.py --tree /work/main --tree /tmp/scratch [--rounds 5] [--duration 5]
                                 [--upstream nginx|crm] [--workers 1] [--redis] [--openloop]
                                 [--python /path/to/venv/bin/python ...]

To measure a lever before applying it: copy the repository, change the copy,
compare. The trees run side by side against one upstream, interleaved (the
order alternates every round), each with the benchmark config (example policy
+ ``--rules`` generated rules, authenticated session cookie); per round the
ratios to the first tree are taken, and their medians printed. With ``--python``
(repeat) every tree, and the naive proxy, also runs under each interpreter given
(a virtualenv's python with the project's dependencies): which Python to ship.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchconfig
from procstat import TreeSample
from run import run_openloop, run_wrk
from services import HOST, REPO, Services, free_port


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", type=Path, help="a source tree holding gateway/ (repeat)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--upstream", choices=("nginx", "crm"), default="nginx")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--redis", action="store_true",
                        help="sessions in Redis (a redis-server is started) also with one worker")
    parser.add_argument("--openloop", action="store_true",
                        help="also an open-loop run per round: latency and CPU per request at a fixed rate")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop rate (default 500/s)")
    parser.add_argument("--naive", action="store_true", help="add the naive pass-through as a reference row")
    parser.add_argument("--python", action="append", default=[],
                        help="also run every tree (and the naive proxy) under this interpreter (repeat)")
    args = parser.parse_args(argv)
    trees: list[Path] = [t.resolve() for t in (args.tree or [REPO])]
    workdir = Path(tempfile.mkdtemp(prefix="crmgw-compare-"))
    rows: list[list[dict[str, Any]]] = []
    labels: list[str] = []
    try:
        with Services(workdir) as services:
            upstream = services.nginx_upstream() if args.upstream == "nginx" else services.demo_crm()
            # several workers need the Redis session store (serve refuses the cookie store with them)
            redis_url = f"redis://{HOST}:{services.redis().port}/0" if args.workers > 1 or args.redis else None
            gateways = []
            pythons = [sys.executable, *args.python]
            for python in pythons:
                suffix = f" @ {python_version(python)}" if args.python else ""
                for tree in trees:
                    index, port = len(gateways), free_port()
                    config = benchconfig.write_config(workdir / f"tree{index}", port=port,
                                                      upstream_port=upstream.port, rules=args.rules,
                                                      redis_url=redis_url)
                    gateways.append((config, services.gateway(config, port, args.workers, f"tree{index}", tree=tree,
                                                              python=python)))
                    labels.append(f"{tree}{suffix}")
                if args.naive:
                    gateways.append((gateways[0][0], services.naive_proxy(upstream.port, f"naive{len(gateways)}",
                                                                          python=python)))
                    labels.append(f"naive pass-through{suffix}")
            for r in range(args.rounds):
                order = list(range(len(gateways)))
                if r % 2:
                    order.reverse()
                row: list[dict[str, Any]] = [{} for _ in gateways]
                for index in order:
                    config, proc = gateways[index]
                    cookie = (benchconfig.minted_cookie(config) if args.upstream == "nginx"
                              else asyncio.run(benchconfig.login_cookie(proc.port)))
                    run_wrk(proc.port, 1, cookie)
                    before = TreeSample.read(proc.pid)
                    closed = run_wrk(proc.port, args.duration, cookie)
                    after = TreeSample.read(proc.pid)
                    entry = {"rps": closed["rps"], "cpu_ms": (after.cpu - before.cpu) / closed["requests"] * 1e3,
                             "errors": closed["error_count"], "rss_mib": after.rss / 2**20}
                    if args.openloop:
                        before = TreeSample.read(proc.pid)
                        opened = run_openloop(proc.port, args.duration, cookie, rate=args.rate, warmup=0.5)
                        after = TreeSample.read(proc.pid)
                        entry.update(p50=opened["latency_ms"]["p50"], p99=opened["latency_ms"]["p99"],
                                     cpu_open_ms=(after.cpu - before.cpu) / (opened["requests"] + args.rate * 0.5)
                                     * 1e3)
                        entry["errors"] += opened["failed"]
                    row[index] = entry
                    print(f"round {r + 1} tree{index} {entry}", file=sys.stderr, flush=True)
                rows.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    keys = ["rps", "cpu_ms", "rss_mib"] + (["p50", "p99", "cpu_open_ms"] if args.openloop else [])
    print("\ncpu_ms: CPU ms per request under wrk; cpu_open_ms: at the fixed open-loop rate")
    print(f"{'tree':40} " + " ".join(f"{k:>9}" for k in keys) + "   ratio to tree0 (median of rounds)")
    for index, label in enumerate(labels):
        medians = [statistics.median(row[index][k] for row in rows) for k in keys]
        ratios = [statistics.median(row[index][k] / row[0][k] for row in rows) for k in keys]
        errors = sum(row[index]["errors"] for row in rows)
        print(f"{label[-40:]:40} " + " ".join(f"{m:9.3f}" for m in medians) + "   "
              + " ".join(f"{k}={q:.3f}" for k, q in zip(keys, ratios, strict=True)) + f"   errors={errors}")
    return 0


def python_version(python: str) -> str:
    """``python3.12.1`` for an interpreter's path, as the rows are labelled."""
    out = subprocess.run([python, "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, check=True)
    return f"python{out.stdout.strip()}"


if __name__ == "__main__":
    raise SystemExit(main())
