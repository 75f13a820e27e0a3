"""How fast does the policy engine decide, and does it slow down with more rules?

Generates policies with 10, 1,000 and 100,000 rules (mixed functions, users,
groups, IPv4 and IPv6 networks and ranges, countries, channels, a few
report-only and expiring rules), then measures decisions per second on one core
for a realistic mix of requests: staff in the office and at home, anonymous
visitors, mobile app users, IPv6 clients, addresses the GeoIP database does not
know, users the policy does not name. It prints a table and the ratio
``rate at 100,000 rules / rate at 10 rules`` (target: >= 0.5), and the rate at
100,000 rules (target: >= 100,000 decisions/s).

The policies are built as specs (no YAML: parsing 100,000 rules would time the
YAML parser, not the engine) and compiled by the real compiler. The caches that
a running gateway keeps warm (path -> functions, User-Agent -> channel, address
-> country) are warmed by one untimed pass, as in steady state.

    python benchmarks/decisions.py [--sizes 10,1000,100000] [--seconds 3] [--rounds 5] [--no-countries]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import sys
import tempfile
import time
from array import array
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.policy import GeoIP, Policy, RequestFacts
from gateway.policy.model import LoginHours
from gateway.policy.networks import NetEntry, parse_entry
from gateway.policy.spec import (
    ChannelSpec,
    DefaultsSpec,
    Expiry,
    FunctionSpec,
    GroupSpec,
    OverrideSpec,
    PolicySpec,
    RuleSpec,
    UserSpec,
)
from gateway.yamlsrc import Where

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday, inside office hours
HERE = Where("benchmark", 1)
COUNTRY_CODES = ("GB", "IE", "FR", "DE", "AU", "US", "NL", "ES")
BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0"
MOBILE = "AcmeCRM-Mobile/4.2 (Android 14)"


def _v4(rng: random.Random) -> str:
    return f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def _v6(rng: random.Random) -> str:
    return f"2001:db8:{rng.randint(0, 0xFFFF):x}:{rng.randint(0, 0xFFFF):x}::{rng.randint(1, 0xFFFF):x}"


def _network(rng: random.Random) -> NetEntry:
    kind = rng.random()
    if kind < 0.35:
        text = _v4(rng)  # a single address
    elif kind < 0.6:
        text = str(ipaddress.ip_network(f"{_v4(rng)}/24", strict=False))
    elif kind < 0.7:
        text = str(ipaddress.ip_network(f"{_v4(rng)}/16", strict=False))
    elif kind < 0.78:
        base = ipaddress.ip_address(_v4(rng))
        text = f"{base}-{base + rng.randint(5, 600)}"  # a ragged range
    elif kind < 0.9:
        text = str(ipaddress.ip_network(f"{_v6(rng)}/48", strict=False))
    else:
        text = _v6(rng)
    return parse_entry(text)


def build_spec(size: int, rng: random.Random, *, countries: bool) -> PolicySpec:
    """A policy with ``size`` rules written by an admin (plus the defaults' own)."""
    n_functions = max(5, min(60, size // 50))
    n_users = max(4, min(20_000, size // 5))
    n_groups = max(2, min(500, size // 200))
    functions = [
        FunctionSpec("login", ("/login",), frozenset(), True, None, HERE),
        FunctionSpec("static", ("/static/**", "/favicon.ico"), frozenset(), True, None, HERE),
        FunctionSpec("export", ("/**/export", "/reports/*/csv"), frozenset(), False, None, HERE),
        FunctionSpec("clock-in", ("/timeclock/clock-in",), frozenset({"POST"}), False, None, HERE),
    ]
    functions += [
        FunctionSpec(f"area{i}", (f"/area{i}/**",), frozenset(), False, None, HERE) for i in range(n_functions)
    ]
    users = [f"user{i}" for i in range(n_users)]
    groups = [
        GroupSpec(f"group{g}", tuple(u for i, u in enumerate(users) if i % n_groups == g or i % 7 == g), HERE)
        for g in range(n_groups)
    ]
    people = [
        UserSpec(
            u,
            "Australia/Sydney" if i % 11 == 0 else None,
            (
                OverrideSpec(
                    u, 0, False, None, None, None, None, "travels", Expiry(date(2026, 12, 31), "2026-12-31"),
                    date(2026, 11, 2), "maria", HERE,
                ),
            )
            if i % 13 == 0
            else (),
            HERE,
        )
        for i, u in enumerate(users)
    ]  # fmt: skip
    defaults = DefaultsSpec(
        ip_lockdown=True,
        allowed_networks=tuple(parse_entry(t) for t in ("193.167.1.70", "193.167.2.0/24", "2001:db8:10::/48")),
        mobile_any_ip=True,
        require_2fa=True,
        login_hours=LoginHours("Europe/London", frozenset(range(5)), datetime(2026, 1, 1, 7).time(),
                               datetime(2026, 1, 1, 19).time()),
        where=HERE,
        key_where=(),
    )  # fmt: skip
    names = [f.name for f in functions]
    rules: list[RuleSpec] = []
    for index in range(size):
        roll = rng.random()
        user_rule = roll < 0.45
        group_rule = 0.45 <= roll < 0.7
        country_rule = countries and 0.9 <= roll < 0.97
        function = rng.choice(names) if rng.random() < 0.7 else None
        networks = None if country_rule or roll >= 0.97 else tuple(_network(rng) for _ in range(rng.randint(1, 3)))
        codes = frozenset(rng.sample(COUNTRY_CODES, rng.randint(1, 2))) if country_rule else None
        rules.append(
            RuleSpec(
                id=f"r{index}",
                title=f"rule {index}",
                action=rng.choice(("allow", "block")),
                function=function,
                networks=networks,
                countries=codes,
                countries_negated=bool(codes) and rng.random() < 0.3,
                channel="mobile" if rng.random() < 0.1 else None,
                users=frozenset(rng.sample(users, rng.randint(1, 2))) if user_rule else None,
                groups=frozenset({f"group{rng.randrange(n_groups)}"}) if group_rule else None,
                priority=10 if rng.random() < 0.01 else 0,
                report_only=rng.random() < 0.02,
                expires=Expiry(NOW.date() + timedelta(days=rng.randint(-30, 30)), "x") if rng.random() < 0.05 else None,
                reason=None,
                file=HERE.file,
            )
        )  # fmt: skip
    channels = (ChannelSpec("mobile", ("^AcmeCRM-Mobile/", r"CRMApp/\d+"), ("/api/mobile/**",), HERE),)
    lines = array("I", range(1, len(rules) + 1))
    return PolicySpec(channels, tuple(functions), defaults, tuple(groups), tuple(people), tuple(rules), lines)


def build_facts(spec: PolicySpec, rng: random.Random, count: int) -> list[RequestFacts]:
    """A realistic mix of requests against that policy."""
    users = [u.name for u in spec.users]
    areas = [f.paths[0].replace("/**", "") for f in spec.functions if f.name.startswith("area")]
    rule_addresses = [
        str(entry.blocks[0].network_address + min(3, entry.blocks[0].num_addresses - 1))
        for rule in spec.rules[:2000]
        if rule.networks
        for entry in rule.networks
    ] or ["193.167.2.20"]
    out: list[RequestFacts] = []
    for _ in range(count):
        who = rng.random()
        user = None if who < 0.2 else (f"stranger{rng.randint(0, 99)}" if who < 0.3 else rng.choice(users))
        where = rng.random()
        if where < 0.35:
            ip = rng.choice(("193.167.1.70", "193.167.2.20", "193.167.2.140", "2001:db8:10::9"))
        elif where < 0.6:
            ip = rng.choice(rule_addresses)
        elif where < 0.85:
            ip = _v4(rng)
        else:
            ip = _v6(rng)
        kind = rng.random()
        mobile = kind < 0.2
        if mobile:
            job = f"/api/mobile/jobs/{rng.randint(1, 9999)}"
            path = rng.choice(("/api/mobile/contacts", "/api/mobile/export", job))
        elif kind < 0.3:
            path = rng.choice(("/login", "/static/app.css", "/favicon.ico"))
        elif kind < 0.8:
            path = f"{rng.choice(areas)}/{rng.randint(1, 5000)}"
        else:
            path = rng.choice(("/", "/contacts", "/reports/q3/csv", "/timeclock/clock-in", "/contacts/export"))
        method = "POST" if rng.random() < 0.15 else "GET"
        out.append(
            RequestFacts(
                client_ip=ipaddress.ip_address(ip),
                method=method,
                path=path,
                user_agent=MOBILE if mobile else BROWSER,
                user=user,
                at=NOW + timedelta(minutes=rng.randint(-600, 600)),
            )
        )  # fmt: skip
    return out


def country_db(folder: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Bench-Country")
    rng = random.Random(7)
    for first in range(11, 224):
        writer.insert_network(IPSet([f"{first}.0.0.0/8"]), {"country": {"iso_code": rng.choice(COUNTRY_CODES)}})
    writer.insert_network(IPSet(["2001:db8::/32"]), {"country_code": "DE"})
    path = folder / "bench.mmdb"
    writer.to_db_file(str(path))
    return path


def measure(policy: Policy, facts: list[RequestFacts], seconds: float, rounds: int) -> float:
    """Best rate of ``rounds`` timed passes (as timeit does: noise from other processes only slows)."""
    decide = policy.decide
    for item in facts:  # warm the caches a running gateway keeps warm
        decide(item)
    gc.collect()
    best = 0.0
    for _ in range(rounds):
        done = 0
        started = time.perf_counter()
        deadline = started + seconds / rounds
        while True:
            for item in facts:
                decide(item)
            done += len(facts)
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, done / (now - started))
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,1000,100000")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per size")
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per size; the best one counts")
    parser.add_argument("--facts", type=int, default=20000, help="distinct requests in the mix")
    parser.add_argument("--no-countries", action="store_true", help="no country rules and no GeoIP lookups")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        geoip = None if args.no_countries else GeoIP(country_db(Path(folder)))
        print(f"{'rules':>8} {'compiled':>9} {'compile s':>10} {'decisions/s':>12} {'us/decision':>12} {'denied':>7}")
        rates: dict[int, float] = {}
        for size in sizes:
            rng = random.Random(size)
            spec = build_spec(size, rng, countries=geoip is not None)
            started = time.perf_counter()
            policy = Policy(spec, geoip=geoip, now=NOW)
            compile_seconds = time.perf_counter() - started
            facts = build_facts(spec, rng, args.facts)
            denied = sum(1 for f in facts if not policy.decide(f).allowed) / len(facts)
            rate = measure(policy, facts, args.seconds, args.rounds)
            rates[size] = rate
            print(
                f"{size:>8} {policy.rule_count:>9} {compile_seconds:>10.2f} {rate:>12,.0f} "
                f"{1e6 / rate:>12.2f} {denied:>7.0%}"
            )
    if len(sizes) > 1:
        small, large = sizes[0], sizes[-1]
        print(f"ratio rate({large}) / rate({small}) = {rates[large] / rates[small]:.2f}  (target >= 0.5)")
        print(f"rate at {large} rules = {rates[large]:,.0f} decisions/s  (target >= 100,000)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
