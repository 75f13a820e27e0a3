"""Where a proxied request's CPU goes, by subtraction on real sockets.

    python benchmarks/floors.py [--rounds 5] [--duration 5] [--out benchmarks/results/floors.json]

A sampling profiler charges a socket write with the wake-ups it causes in the
processes on the other end, which on this VM are dear, so it over-weights
system calls. This measures instead: seven proxies in front of the same nginx
upstream, each driven by the same wrk run (``-t1 -c50``, ``/health``, the
gateways' session cookie on every request, fresh for each run), interleaved
(the order reverses every round), medians over rounds:

- ``bare``: httptools on both sides and nothing else (floors/bare_proxy.py): the floor
  for any Python proxy here;
- ``pool``: the same httptools server side with the gateway's own upstream pool as the client
  (floors/pool_proxy.py);
- ``lean``: aiohttp's low-level server + the gateway's upstream pool (floors/lean_proxy.py):
  the two HTTP sides the gateway is built on;
- ``gateway-paths``, ``gateway-identity``, ``gateway``: ``serve`` with the benchmark config
  (example policy + 1,000 generated rules), its filter chain cut to a layer
  (floors/gateway_layer.py), then whole;
- ``naive``: the naive aiohttp pass-through (the issue's baseline);
- ``bare+N us`` (``--busy``, 25, 50 and 100 by default): the bare proxy spinning N µs of pure
  Python per request. What the rest of its request costs grows with N (the wake-ups above):
  a µs of work saved saves more than a µs.

Each row's CPU per request minus the one above it is what that layer adds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchconfig
from procstat import TreeSample
from run import PATH, RULES, run_wrk
from services import BENCH, HOST, Proc, Services, free_port, python_env

FLOORS = BENCH / "floors"
ROWS = ("bare", "pool", "lean", "gateway-paths", "gateway-identity", "gateway", "naive")
LAYERS = {"gateway-paths": "paths", "gateway-identity": "identity", "gateway": "full"}
# What each row adds over the row before it, in words.
ADDS = {
    "pool": "the gateway's upstream pool (its Python, and header hygiene) for the client side",
    "lean": "aiohttp's server side for the httptools one",
    "gateway-paths": "the gateway's plumbing: handler, chain, exchange, client address, path, proxy, metrics",
    "gateway-identity": "session, CRM-cookie binding, 2FA and login filters",
    "gateway": "the policy decision",
}


def busy_row(us: int) -> str:
    return f"bare+{us}us"


def start(services: Services, workdir: Path, upstream: Proc, busy: list[int]) -> tuple[dict[str, Proc], Path]:
    procs: dict[str, Proc] = {}
    for us in busy:
        port = free_port()
        procs[busy_row(us)] = services.start(
            busy_row(us), [sys.executable, str(FLOORS / "bare_proxy.py"), str(port), str(upstream.port), str(us)],
            port, env=python_env(), ready_path=None)
    for name in ("bare", "pool", "lean"):
        port = free_port()
        procs[name] = services.start(name, [sys.executable, str(FLOORS / f"{name}_proxy.py"), str(port),
                                            str(upstream.port)], port, env=python_env(), ready_path=None)
    config = Path()
    for name, layer in LAYERS.items():
        port = free_port()
        config = benchconfig.write_config(workdir / name, port=port, upstream_port=upstream.port,
                                          rules=RULES)
        procs[name] = services.start(name, [sys.executable, str(FLOORS / "gateway_layer.py"), "serve", "-c",
                                            str(config)], port, env=python_env(BENCH_LAYER=layer),
                                     ready_path="/_gateway/health", timeout=180.0)
    procs["naive"] = services.naive_proxy(upstream.port, "naive")
    return procs, config  # every gateway config holds the same session key: one cookie fits all


def sanity(procs: dict[str, Proc], cookie: str) -> None:
    """Every row answers the request 200, and the gateways judged it (X-Request-ID)."""
    for name, proc in procs.items():
        request = urllib.request.Request(f"http://{HOST}:{proc.port}{PATH}", headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=5) as response:
            if response.status != 200:
                raise RuntimeError(f"{name}: status {response.status}")
            if name in LAYERS and not response.headers.get("X-Request-ID"):
                raise RuntimeError(f"{name}: no X-Request-ID, not the gateway?")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "floors.json")
    parser.add_argument("--busy", default="25,50,100",
                        help="µs of pure Python the bare proxy also spins per request, a row each ('' for none)")
    args = parser.parse_args(argv)
    busy = [int(us) for us in args.busy.split(",") if us.strip()]
    rows = (ROWS[0], *(busy_row(us) for us in busy), *ROWS[1:])
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in rows}
    with tempfile.TemporaryDirectory(prefix="crmgw-floors-") as tmp, Services(Path(tmp)) as services:
        upstream = services.nginx_upstream()
        procs, config = start(services, Path(tmp), upstream, busy)
        sanity(procs, benchconfig.minted_cookie(config))
        for r in range(args.rounds):
            order = rows if r % 2 == 0 else rows[::-1]
            for name in order:
                proc = procs[name]
                cookie = benchconfig.minted_cookie(config)  # its idle clock starts now: no re-save mid-run
                run_wrk(proc.port, 1, cookie)
                before = TreeSample.read(proc.pid)
                closed = run_wrk(proc.port, args.duration, cookie)
                after = TreeSample.read(proc.pid)
                if closed["error_count"]:
                    raise RuntimeError(f"{name}: {closed['errors']}")
                runs[name].append({"rps": closed["rps"],
                                   "cpu_us": (after.cpu - before.cpu) / closed["requests"] * 1e6})
                print(f"round {r + 1} {name:17} {closed['rps']:9,.0f} req/s {runs[name][-1]['cpu_us']:7.1f} us/req",
                      file=sys.stderr, flush=True)
    spun_us = {busy_row(us): us for us in busy}
    result: dict[str, Any] = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "rounds": args.rounds,
                              "duration_s": args.duration, "rows": {}}
    print(f"\n{'proxy':17} {'req/s':>9} {'us/req':>7} {'x naive':>8}   CPU us/request added over the row above")
    previous = None
    for name in rows:
        rps = statistics.median(run["rps"] for run in runs[name])
        cpu = statistics.median(run["cpu_us"] for run in runs[name])
        ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(runs[name], runs["naive"], strict=True))
        row = result["rows"][name] = {"rps": rps, "cpu_us_per_request": cpu, "rps_vs_naive": ratio, "runs": runs[name]}
        added = ""
        if name in spun_us:
            spun = spun_us[name]
            row["other_cpu_us"] = cpu - spun
            added = f"{row['other_cpu_us']:7.1f}  besides the {spun} µs spun: what the rest of a request costs now"
        elif previous is not None and name in ADDS:
            row["added_cpu_us"] = cpu - result["rows"][previous]["cpu_us_per_request"]
            added = f"{row['added_cpu_us']:+7.1f}  {ADDS[name]}"
        print(f"{name:17} {rps:9,.0f} {cpu:7.1f} {ratio:8.2f}   {added}")
        if name not in spun_us:
            previous = name
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
