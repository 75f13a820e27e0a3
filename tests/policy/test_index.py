"""The index is an optimisation: it must decide exactly like the obvious walk over every rule.

A reference decider below implements DESIGN.md §3.3 straight from the text (no
buckets, no prefix tables, no early stops). Hypothesis generates policies and
requests; the engine's fast path must agree on every verdict, deciding rule
and reason.
"""

from __future__ import annotations

import ipaddress
from array import array
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy import GeoIP, Policy, RequestFacts
from gateway.policy.networks import parse_entry, v6_prefix
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
    canonical_user,
)
from gateway.yamlsrc import Where

HERE = Where("generated", 1)
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
USERS = ("jim", "bob", "alice", "pat")
GROUPS = {"warehouse": ("jim", "bob"), "sales": ("alice",), "pms": ("pat", "alice")}
FUNCTIONS = (
    FunctionSpec("contacts", ("/contacts/**",), frozenset(), False, None, HERE),
    FunctionSpec("export", ("/**/export",), frozenset(), False, None, HERE),
    FunctionSpec("clock-in", ("/clock-in",), frozenset({"POST"}), False, None, HERE),
    FunctionSpec("login", ("/login",), frozenset(), True, None, HERE),
)
CHANNELS = (ChannelSpec("mobile", ("^App/",), ("/api/**", "/contacts/**"), HERE),)
NETWORKS = (
    "193.167.0.0/16", "193.167.2.0/24", "193.167.2.10", "193.167.2.0-193.167.2.20", "81.2.69.0/24",
    "0.0.0.0/0", "5.135.0.0/16", "2001:db8:10::/48", "2001:db8:10:1::/64", "2001:db8:10:1::5", "::/0",
    "2001:db8:99::1-2001:db8:99::ff", "10.0.0.0/8",
)  # fmt: skip
ADDRESSES = (
    "193.167.2.10", "193.167.2.11", "193.167.2.30", "193.167.9.9", "81.2.69.142", "5.135.10.20", "62.40.1.1",
    "10.9.8.7", "2001:db8:10:1::5", "2001:db8:10:1::6", "2001:db8:10:2::1", "2001:db8:99::1", "2001:db8:ff::1",
)  # fmt: skip
PATHS = ("/", "/contacts/1", "/contacts/export", "/export", "/clock-in", "/login", "/api/jobs")
COUNTRY_CODES = ("GB", "FR", "IE", "DE")


def _expiry(days: int | None) -> Expiry | None:
    return None if days is None else Expiry(NOW.date() + timedelta(days=days), "generated")


@st.composite
def rules(draw: st.DrawFn, index: int) -> RuleSpec:
    countries = draw(st.none() | st.frozensets(st.sampled_from(COUNTRY_CODES), min_size=1, max_size=2))
    return RuleSpec(
        id=f"r{index}",
        title=f"rule {index}",
        action=draw(st.sampled_from(("allow", "block"))),
        function=draw(st.none() | st.sampled_from([f.name for f in FUNCTIONS])),
        networks=draw(
            st.none()
            | st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=3).map(
                lambda items: tuple(parse_entry(i) for i in items)
            )
        ),
        countries=countries,
        countries_negated=countries is not None and draw(st.booleans()),
        channel=draw(st.none() | st.sampled_from(("mobile", "web"))),
        users=draw(st.none() | st.frozensets(st.sampled_from(USERS), min_size=1, max_size=2)),
        groups=draw(st.none() | st.frozensets(st.sampled_from(sorted(GROUPS)), min_size=1, max_size=2)),
        priority=draw(st.sampled_from((0, 0, 0, 0, 1, -1, 5))),
        report_only=draw(st.sampled_from((False, False, False, True))),
        expires=_expiry(draw(st.none() | st.integers(-3, 3))),
        reason=None,
        file=HERE.file,
    )


@st.composite
def policies(draw: st.DrawFn) -> PolicySpec:
    defaults = None
    if draw(st.booleans()):
        defaults = DefaultsSpec(
            ip_lockdown=draw(st.booleans()),
            allowed_networks=(parse_entry("193.167.2.0/24"), parse_entry("2001:db8:10::/48")),
            mobile_any_ip=draw(st.booleans()),
            require_2fa=False,
            login_hours=None,
            where=HERE,
            key_where=(),
        )
    people = []
    for user in USERS:
        overrides = []
        for i in range(draw(st.integers(0, 2))):
            overrides.append(
                OverrideSpec(
                    user=user,
                    index=i,
                    ip_lockdown=draw(st.none() | st.booleans()),
                    allowed_networks=draw(st.none() | st.just((parse_entry("81.2.69.0/24"),))),
                    mobile_any_ip=draw(st.none() | st.booleans()),
                    require_2fa=None,
                    login_hours=None,
                    reason=f"{user} {i}",
                    expires=_expiry(draw(st.none() | st.integers(-2, 2))),
                    granted=date(2026, 11, 1),
                    by=None,
                    where=HERE,
                )
            )
        people.append(UserSpec(user, None, tuple(overrides), HERE))
    count = draw(st.integers(0, 14))
    return PolicySpec(
        channels=CHANNELS,
        functions=FUNCTIONS,
        defaults=defaults,
        groups=tuple(GroupSpec(name, members, HERE) for name, members in GROUPS.items()),
        users=tuple(people),
        rules=tuple(draw(rules(i)) for i in range(count)),
        rule_lines=array("I", range(1, count + 1)),
    )


facts_strategy = st.builds(
    lambda ip, path, user, method, mobile, minutes: RequestFacts(
        client_ip=ipaddress.ip_address(ip),
        method=method,
        path=path,
        user_agent="App/3" if mobile else "Mozilla/5.0",
        user=user,
        at=NOW + timedelta(minutes=minutes),
    ),
    st.sampled_from(ADDRESSES),
    st.sampled_from(PATHS),
    st.none() | st.sampled_from((*USERS, "Jim", "zed")),
    st.sampled_from(("GET", "POST")),
    st.booleans(),
    st.integers(-4 * 24 * 60, 4 * 24 * 60),
)


def reference(policy: Policy, geoip: GeoIP, facts: RequestFacts, default_action: str) -> tuple[object, ...]:
    """DESIGN.md §3.3 and §3.5, the slow and obvious way."""
    functions = policy.functions_of(facts.method, facts.path)
    channel = policy.channel_of(facts.user_agent, facts.path)
    user = None if facts.user is None else canonical_user(facts.user)
    if user is None and functions and all(f.public for f in FUNCTIONS if f.name in functions):
        return ("allow", True, None, f"functions.{functions[0]}.public")
    groups = policy.groups_of(user) if user is not None else frozenset()
    country = geoip.country(facts.client_ip)
    matches = []
    for rule in policy.rules:
        if rule.function is not None and rule.function not in functions:
            continue
        if rule.users is not None and user not in rule.users:
            continue
        if rule.groups is not None and (user is None or not (rule.groups & groups)):
            continue
        if rule.channel is not None and rule.channel != channel:
            continue
        if rule.expires_at is not None and facts.at >= rule.expires_at:
            continue
        if rule.countries is not None and (country in rule.countries) == rule.countries_negated:
            continue
        network = -1
        if rule.networks is not None:
            prefixes = [
                v6_prefix(block)
                for entry in rule.networks
                for block in entry.blocks
                if block.version == facts.client_ip.version and facts.client_ip in block
            ]
            if not prefixes:
                continue
            network = max(prefixes)
        subject = 2 if rule.users else 1 if rule.groups else 0
        key = (
            rule.priority,
            int(rule.function is not None),
            subject,
            network,
            int(rule.countries is not None),
            int(rule.channel is not None),
            int(rule.action == "block"),
            -rule.order,
        )
        matches.append((key, rule))
    enforced = max((m for m in matches if not m[1].report_only), default=None, key=lambda m: m[0])
    top = max(matches, default=None, key=lambda m: m[0])
    if enforced is None:
        if default_action == "block":
            return ("deny", True, "ip_not_allowed", "default_action")
        allows, rule_id = True, "default_action"
    else:
        rule = enforced[1]
        if rule.action == "block":
            return ("deny", True, rule.deny_reason, rule.id)
        allows, rule_id = True, rule.id
    if top is not None and top[1].report_only and top[1].action == "block" and top is not enforced:
        return ("deny", False, top[1].deny_reason, top[1].id)
    assert allows
    return ("allow", True, None, rule_id)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=policies(), requests=st.lists(facts_strategy, min_size=1, max_size=12), block=st.booleans())
def test_the_index_decides_like_the_obvious_walk(
    example_dir: Path, spec: PolicySpec, requests: list[RequestFacts], block: bool
) -> None:
    geoip = GeoIP(example_dir / "country.mmdb")
    default_action = "block" if block else "allow"
    policy = Policy(spec, geoip=geoip, default_action=default_action, now=NOW)
    for facts in requests:
        decision = policy.decide(facts)
        got = (decision.action, decision.enforced, decision.reason, decision.rule_id)
        assert got == reference(policy, geoip, facts, default_action), facts
        explained = policy.decide(facts, explain=True)
        assert (explained.action, explained.enforced, explained.reason, explained.rule_id) == got
        deciding = [e.rule_id for e in explained.trace if e.deciding]
        assert deciding == [got[3]], (deciding, got)
