"""A large policy: idle memory, and SIGHUP reloads under steady traffic.

    python benchmarks/reload.py [--rules 100000] [--rate 200] [--reloads 3] [--out benchmarks/results/reload.json]

Generates the benchmark policy with ``--rules`` rules (example policy +
generated rules, as run.py but 100x more), starts ``serve`` (1 worker, nginx
upstream, ``logging.level: info`` so the ``config.reloaded`` events are
written), and reports:

- start-up time (spawn to first answer) and idle RSS (after start and a few requests);
- with a steady open-loop ``--rate`` of authenticated requests running, ``--reloads``
  SIGHUPs a few seconds apart, each right after a real edit (:data:`EDITS`): one
  more group in the small ``people.yaml``; in the 12 MB ``generated.yaml`` one rule
  appended, one changed in the middle, one inserted at the top, its functions
  section changed, two rules changed far apart, one rule moved to the top
  (each read as an edit), a tenth of its rules rewritten (a bulk change:
  those 10,000 are read by two child processes), and a typo in one rule (the reload
  is refused and the running policy stays; the file is put back right after, and the
  watcher reloads it). Each is reported apart. For each: its duration
  (SIGHUP sent -> the ``config.reloaded`` or ``config.reload_failed`` event's own
  timestamp), the peak RSS while two policies coexist, the RSS before and after,
  and the latency of requests due during it;
- failed requests over the whole run (any non-2xx, error or timeout).

Targets (issue 6): idle RSS < 150 MiB, reload < 1 s, no request failed; the
reload target is reported apart for edits that leave the other rules in place,
for those that move every rule below them (an insert at the top, a longer
functions section, a rule moved to the top), for the bulk change, and for the typo.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchconfig
from openloop import summary
from procstat import TreeSample, reset_tree_peak
from run import run_wrk
from services import BENCH, REPO, Services, free_port


def events(log_text: str, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log_text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == name:
            out.append(event)
    return out


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def sighup_reloads(log_text: str) -> list[dict[str, Any]]:
    """``config.reloaded`` events of SIGHUPs (the file watcher may also reload after an edit)."""
    return [e for e in events(log_text, "config.reloaded") if e.get("trigger") == "sighup"]


def sighup_failures(log_text: str) -> list[dict[str, Any]]:
    """``config.reload_failed`` events of SIGHUPs."""
    return [e for e in events(log_text, "config.reload_failed") if e.get("trigger") == "sighup"]


# The edits made before each SIGHUP, in order (--reloads N makes the first N, and goes round again):
# what an admin does to the small people.yaml, and to the 100,000-rule generated.yaml: one rule
# appended, changed in place or inserted at the top, its other section changed, two rules changed
# far apart (a tenth and nine tenths down), one rule moved to the top; and what a generator's run
# may do: a tenth of the rules rewritten (their titles, those whose number ends in one digit); and a
# typo (an action misspelt), which the reload must refuse.
EDITS = (
    ("people.yaml", "one more group"),
    ("generated.yaml", "one rule appended"),
    ("generated.yaml", "one rule changed in the middle"),
    ("generated.yaml", "one rule inserted at the top"),
    ("generated.yaml", "its functions section changed"),
    ("generated.yaml", "two rules changed far apart"),
    ("generated.yaml", "one rule moved to the top"),
    ("generated.yaml", "a tenth of its rules rewritten"),
    ("generated.yaml", "a typo in one rule"),
)
# Edits after which every rule below the place they touched is on another line.
MOVING = ("one rule inserted at the top", "its functions section changed", "one rule moved to the top")
BULK = ("a tenth of its rules rewritten",)
# Edits the reload must refuse (the running policy stays); the file is put back right after.
FAILING = ("a typo in one rule",)


def edit(directory: Path, kind: str, index: int, rules: int) -> None:
    """A real, valid edit of one of the :data:`EDITS` kinds."""
    if kind == "one more group":
        path = directory / "people.yaml"
        people = yaml.safe_load(path.read_text())
        people.setdefault("groups", {})[f"reload-{index}"] = [benchconfig.USER]
        path.write_text(yaml.safe_dump(people, sort_keys=False))
        return
    path = directory / "generated.yaml"
    text = path.read_text()
    rule = (f"- id: reload-{index}\n  title: Added before reload {index}\n  action: block\n"
            f"  networks:\n  - 10.255.255.{index % 250 + 1}\n")
    if kind == "one rule appended":  # its last section is the rules list
        text += rule
    elif kind == "one rule changed in the middle":
        target = rules // 2 + index  # another rule each time
        middle = f"- id: gen-{target:06d}\n  title: Generated rule {target}\n"
        assert middle in text, middle
        text = text.replace(middle, f"- id: gen-{target:06d}\n  title: Changed before reload {index}\n")
    elif kind == "one rule inserted at the top":
        text = text.replace("\nrules:\n", "\nrules:\n" + rule, 1)
    elif kind == "two rules changed far apart":
        for target in (rules // 10 + index, rules * 9 // 10 + index):
            title = f"- id: gen-{target:06d}\n  title: Generated rule {target}\n"
            assert title in text, title
            text = text.replace(title, f"- id: gen-{target:06d}\n  title: Changed before reload {index}\n")
    elif kind == "a tenth of its rules rewritten":
        title = rf"(\n  title: Generated rule \d*{index % 10})\n"
        text, count = re.subn(title, rf"\1 (edited before reload {index})\n", text)
        assert count >= rules // 20, count  # another digit each time (a rule once edited no longer matches)
    elif kind == "a typo in one rule":  # the good text is kept beside it, to be put back (put_back)
        (directory / "generated.yaml.good").write_text(text)
        target = rules // 3 + index
        action = f"- id: gen-{target:06d}\n  title: Generated rule {target}\n  action: "
        assert action in text, action
        text = text.replace(action, action + "blo", 1)  # "bloblock" or "bloallow"
    elif kind == "one rule moved to the top":
        start = text.index(f"\n- id: gen-{rules // 4 + index:06d}\n") + 1
        end = text.index("\n- ", start) + 1
        item = text[start:end]
        text = text[:start] + text[end:]
        text = text.replace("\nrules:\n", "\nrules:\n" + item, 1)
    else:
        paths = "  gen-fn-000:\n    paths:\n    - /module-000/**\n"
        assert paths in text, paths
        text = text.replace(paths, paths + f"    - /module-000-{index}/**\n", 1)
    path.write_text(text)


def put_back(directory: Path) -> None:
    """The file as it was before a :data:`FAILING` edit (the running policy's): the watcher reloads it."""
    good = directory / "generated.yaml.good"
    (directory / "generated.yaml").write_text(good.read_text())
    good.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rules", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=200.0, help="steady requests per second during reloads")
    parser.add_argument("--reloads", type=int, default=len(EDITS), help=f"the first N of {len(EDITS)} edits")
    parser.add_argument("--interval", type=float, default=8.0, help="seconds between SIGHUPs")
    parser.add_argument("--out", default=str(BENCH / "results" / "reload.json"))
    parser.add_argument("--tree", type=Path, default=REPO, help="source tree to run serve from (a lever on a copy)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="crmgw-reload-"))
    result: dict[str, Any] = {"rules_generated": args.rules, "rate": args.rate, "tree": str(args.tree)}
    load_proc: subprocess.Popen[str] | None = None
    try:
        with Services(workdir) as services:
            upstream = services.nginx_upstream()
            port = free_port()
            config = benchconfig.write_config(workdir / "gw", port=port, upstream_port=upstream.port,
                                              rules=args.rules, level="info")
            result["policy_bytes"] = sum(p.stat().st_size for p in (workdir / "gw").glob("*.yaml"))
            started = time.monotonic()
            gateway = services.gateway(config, port, 1, "gateway", tree=args.tree.resolve())
            result["startup_s"] = time.monotonic() - started
            started_events = events(gateway.log_text(), "gateway.started")
            result["rules_loaded"] = started_events[0].get("rules") if started_events else None
            cookie = benchconfig.minted_cookie(config)
            time.sleep(1.0)
            result["rss_after_start_mib"] = TreeSample.read(gateway.pid).rss / 2**20
            run_wrk(port, 1, cookie, connections=4)  # a few thousand requests: caches and pools warm
            time.sleep(2.0)
            idle = TreeSample.read(gateway.pid)
            result["idle_rss_mib"] = idle.rss / 2**20
            print(f"{result['rules_loaded']} rules loaded in {result['startup_s']:.1f} s; idle RSS "
                  f"{result['idle_rss_mib']:.1f} MiB", file=sys.stderr, flush=True)

            settle = 3.0
            # Open-ended steady load: stopped with SIGTERM once the last reload is done (it then reports).
            load_proc = subprocess.Popen(
                [sys.executable, str(BENCH / "openloop.py"), "--port", str(port), "--rate", str(args.rate),
                 "--duration", "3600", "--warmup", "0.5", "--timeline", "-H", f"Cookie: {cookie}"],
                stdout=subprocess.PIPE, text=True)
            time.sleep(0.5 + settle)
            reloads: list[dict[str, Any]] = []
            for index in range(args.reloads):
                edited, kind = EDITS[index % len(EDITS)]
                edit(workdir / "gw", kind, index, args.rules)
                seen = len(sighup_reloads(gateway.log_text()))
                seen_failed = len(sighup_failures(gateway.log_text()))
                reset_tree_peak(gateway.pid)
                before = TreeSample.read(gateway.pid)
                sent = time.time()
                gateway.popen.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 300
                event = None
                while time.monotonic() < deadline:
                    log_text = gateway.log_text()
                    done, failed = sighup_reloads(log_text), sighup_failures(log_text)
                    if len(failed) > seen_failed:
                        if kind not in FAILING:
                            raise RuntimeError(f"reload failed: {failed[-1]}")
                        event = failed[-1]
                        break
                    if len(done) > seen:
                        if kind in FAILING:
                            raise RuntimeError(f"a reload that should have failed did not: {done[-1]}")
                        event = done[-1]
                        break
                    time.sleep(0.01)
                if event is None:
                    raise RuntimeError("no config.reloaded or config.reload_failed event within 300 s")
                if kind in FAILING:
                    time.sleep(1.0)  # let the trim after the reload run (server.TRIM_AFTER_RELOAD) before RSS
                after = TreeSample.read(gateway.pid)
                if kind in FAILING:
                    put_back(workdir / "gw")
                entry: dict[str, Any] = {
                    "edited": edited,
                    "edit": kind,
                    "sighup_at": sent,
                    "duration_s": event_time(event) - sent,
                    "rules": event.get("rules"),
                    "peak_rss_mib": after.peak / 2**20,
                    "rss_before_mib": before.rss / 2**20,
                    "rss_after_mib": after.rss / 2**20,
                    "cpu_s": after.cpu - before.cpu,
                }
                reloads.append(entry)
                print(f"reload {index + 1} ({edited}: {kind}): {entry['duration_s']:.3f} s, "
                      f"peak RSS {entry['peak_rss_mib']:.1f} MiB", file=sys.stderr, flush=True)
                time.sleep(max(0.0, sent + args.interval - time.time()))
            time.sleep(2.0)
            load_proc.send_signal(signal.SIGTERM)
            load: dict[str, Any] = json.loads(load_proc.communicate(timeout=120)[0])
            result["rss_after_reloads_mib"] = TreeSample.read(gateway.pid).rss / 2**20
    finally:
        if load_proc is not None and load_proc.poll() is None:
            load_proc.kill()
            load_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    timeline = load.pop("timeline")
    zero = load["started_at"]
    for entry in reloads:
        window_start = entry["sighup_at"] - zero
        window_end = window_start + entry["duration_s"] + 0.5
        during = [t for t in timeline if window_start <= t[0] <= window_end]
        entry["requests_during"] = len(during)
        entry["failed_during"] = sum(not (t[2].isdigit() and 200 <= int(t[2]) < 300) for t in during)
        entry["latency_during_ms"] = summary([t[1] for t in during]) if during else None
    result["load"] = load
    result["reloads"] = reloads
    for edited, kind in EDITS:
        durations = sorted(float(r["duration_s"]) for r in reloads if r["edit"] == kind)
        if durations:
            result.setdefault("reload_s_median", {})[f"{edited}: {kind}"] = statistics.median(durations)
            result.setdefault("reload_s_max", {})[f"{edited}: {kind}"] = durations[-1]
    # edits that leave every other rule where it was, and those that move every rule below them
    in_place = [float(r["duration_s"]) for r in reloads if r["edit"] not in MOVING + BULK + FAILING]
    failing = [float(r["duration_s"]) for r in reloads if r["edit"] in FAILING]
    moved = [float(r["duration_s"]) for r in reloads if r["edit"] in MOVING]
    bulk = [float(r["duration_s"]) for r in reloads if r["edit"] in BULK]
    result["targets"] = {
        "idle RSS < 150 MiB": result["idle_rss_mib"] < 150,
        "reload < 1 s (rules left in place)": bool(in_place) and max(in_place) < 1.0,
        "reload < 1 s (every rule moved)": bool(moved) and max(moved) < 1.0,
        "reload < 1 s (a tenth of the rules rewritten)": bool(bulk) and max(bulk) < 1.0,
        "reload < 1 s (a typo: refused)": bool(failing) and max(failing) < 1.0,
        "no failed request": load["failed"] == 0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")

    print(f"\n{result['rules_loaded']} rules ({result['policy_bytes'] / 2**20:.1f} MiB of YAML)")
    print(f"start-up {result['startup_s']:.1f} s; RSS after start {result['rss_after_start_mib']:.1f} MiB, "
          f"idle {result['idle_rss_mib']:.1f} MiB, after reloads {result['rss_after_reloads_mib']:.1f} MiB")
    print(f"steady load {args.rate:.0f} rps: {load['requests']} requests, {load['failed']} failed; "
          f"p50 {load['latency_ms']['p50']:.2f} ms, p99 {load['latency_ms']['p99']:.2f} ms, "
          f"max {load['latency_ms']['max']:.1f} ms")
    for index, r in enumerate(reloads, 1):
        lat = r["latency_during_ms"] or {"p50": float("nan"), "max": float("nan")}
        print(f"reload {index} ({r['edited']}: {r['edit']}): {r['duration_s']:.3f} s (CPU {r['cpu_s']:.2f} s), "
              f"peak RSS {r['peak_rss_mib']:.1f} MiB, RSS {r['rss_before_mib']:.1f} -> {r['rss_after_mib']:.1f} MiB; "
              f"{r['requests_during']} requests due meanwhile, {r['failed_during']} failed, "
              f"p50 {lat['p50']:.1f} ms, max {lat['max']:.1f} ms")
    for label, median in result.get("reload_s_median", {}).items():
        print(f"  {label:50} median {median:.3f} s, max {result['reload_s_max'][label]:.3f} s")
    for label, met in result["targets"].items():
        print(f"  {label:36} {'met' if met else 'NOT met'}")
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
