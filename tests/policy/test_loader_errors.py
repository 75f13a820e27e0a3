"""Policy file validation: each bad input -> the exact ``file:line: message`` (line numbers asserted)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from tests.policy.world import PolicyMaker

ProblemsOf = Callable[..., list[str]]

GEO_FREE = {"geoip": False}

CASES = [
    # (description, rules.yaml text, extra files, expected problem, keyword options)
    (
        "unknown top-level key",
        """
        rulez: []
        """,
        {},
        "rules.yaml:1: top level: unknown key 'rulez' "
        "(expected one of: channels, defaults, functions, groups, rules, users)",
    ),
    (
        "a file that is a list, not sections",
        """
        - action: block
        """,
        {},
        "rules.yaml:1: expected a mapping of sections (channels, functions, defaults, groups, users, rules) "
        "at the top of the file, got a list",
    ),
    (
        "unknown key in a rule",
        """
        rules:
          - action: block
            fucntion: billing
        """,
        {},
        "rules.yaml:3: rule rules.rules[0]: unknown key 'fucntion' (expected one of: action, channel, countries, "
        "expires, function, groups, id, networks, priority, reason, report_only, title, users)",
    ),
    (
        "wrong type: priority must be an integer",
        """
        rules:
          - action: block
            priority: high
        """,
        {},
        "rules.yaml:3: rule rules.rules[0].priority: expected an integer, got a string ('high')",
    ),
    (
        "wrong type: report_only must be true or false",
        """
        rules:
          - {action: block,
             report_only: sometimes}
        """,
        {},
        "rules.yaml:3: rule rules.rules[0].report_only: expected true or false, got a string ('sometimes')",
    ),
    (
        "bad regex in a channel's user_agents (the item's own line)",
        """
        channels:
          mobile:
            user_agents:
              - '^AcmeCRM-Mobile/'
              - '(unclosed'
        """,
        {},
        "rules.yaml:5: channels.mobile.user_agents: bad regex '(unclosed': missing ): (unclosed",
    ),
    (
        "a lookahead in a channel's user_agents: RE2 has none (it matches in linear time)",
        """
        channels:
          mobile:
            user_agents: ['^AcmeCRM-Mobile/(?!beta)']
        """,
        {},
        "rules.yaml:3: channels.mobile.user_agents: bad regex '^AcmeCRM-Mobile/(?!beta)': "
        "invalid perl operator: (?! (user_agents are RE2 patterns: no lookarounds or backreferences)",
    ),
    (
        "bad CIDR",
        """
        rules:
          - action: allow
            networks:
              - 10.0.0.0/8
              - 10.0.0.300/8
        """,
        {},
        "rules.yaml:5: networks: not an IP address or CIDR: '10.0.0.300/8'",
    ),
    (
        "range whose end is before its start",
        """
        rules:
          - action: allow
            networks: ['10.0.0.9-10.0.0.1']
        """,
        {},
        "rules.yaml:3: networks: range end is before its start: '10.0.0.9-10.0.0.1'",
    ),
    (
        "range mixing IPv4 and IPv6",
        """
        rules:
          - action: allow
            networks: ['10.0.0.1-2001:db8::1']
        """,
        {},
        "rules.yaml:3: networks: a range must not mix IPv4 and IPv6: '10.0.0.1-2001:db8::1'",
    ),
    (
        "'*' mixed with other networks",
        """
        rules:
          - action: allow
            networks: ['*', 10.0.0.0/8]
        """,
        {},
        "rules.yaml:3: networks: '*' means any address; it cannot be mixed with others",
    ),
    (
        "bad country code",
        """
        rules:
          - action: block
            countries:
              - GB
              - GBR
        """,
        {},
        "rules.yaml:5: countries: expected a two-letter ISO code like GB, or '!GB' to negate, got 'GBR'",
    ),
    (
        "negated and plain country codes mixed in one list",
        """
        rules:
          - action: block
            countries: ['!GB', FR]
        """,
        {},
        "rules.yaml:3: countries: do not mix negated ('!GB') and plain ('GB') codes in one list",
    ),
    (
        "countries without a GeoIP database",
        """
        rules:
          - action: block
            countries: [FR]
        """,
        {},
        "rules.yaml:3: rule rules.rules[0]: countries need a GeoIP database: set geoip.database in the main file",
        GEO_FREE,
    ),
    (
        "a function defined twice across files names both places",
        """
        functions:
          billing: {paths: ['/billing/**']}
        """,
        {"more.yaml": "# more functions\nfunctions:\n  billing: {paths: ['/invoices/**']}\n"},
        "more.yaml:3: function 'billing' is defined twice: here and at rules.yaml:2",
    ),
    (
        "a rule id defined twice",
        """
        rules:
          - {id: no-billing, action: block}
          - {id: no-billing, action: allow}
        """,
        {},
        "rules.yaml:3: rule id 'no-billing' is defined twice: here and at rules.yaml:2",
    ),
    (
        "a user defined twice across files (names compared case-insensitively)",
        """
        users:
          alice: {timezone: Europe/London}
        """,
        {"more.yaml": "users:\n  Alice: {timezone: Europe/Paris}\n"},
        "more.yaml:2: user 'alice' is defined twice: here and at rules.yaml:2",
    ),
    (
        "a group defined twice across files",
        """
        groups:
          warehouse: [jim]
        """,
        {"more.yaml": "groups:\n  warehouse: [bob]\n"},
        "more.yaml:2: group 'warehouse' is defined twice: here and at rules.yaml:2",
    ),
    (
        "a channel defined twice across files",
        """
        channels:
          mobile: {user_agents: ['^App/']}
        """,
        {"more.yaml": "channels:\n  mobile: {user_agents: ['^Other/']}\n"},
        "more.yaml:2: channel 'mobile' is defined twice: here and at rules.yaml:2",
    ),
    (
        "defaults defined twice across files",
        """
        defaults: {ip_lockdown: true}
        """,
        {"more.yaml": "defaults: {ip_lockdown: false}\n"},
        "more.yaml:1: defaults are defined twice: here and at rules.yaml:1",
    ),
    (
        "unknown function",
        """
        functions:
          billing: {paths: ['/billing/**']}
        rules:
          - action: block
            function: biling
        """,
        {},
        "rules.yaml:5: function: unknown function 'biling' (defined: billing)",
    ),
    (
        "unknown channel",
        """
        rules:
          - action: block
            channel: app
        """,
        {},
        "rules.yaml:3: channel: unknown channel 'app' (defined: web)",
    ),
    (
        "unknown group (the list item's line)",
        """
        groups:
          warehouse: [jim]
        rules:
          - action: block
            groups:
              - warehous
        """,
        {},
        "rules.yaml:6: groups: unknown group 'warehous' (defined: warehouse)",
    ),
    (
        "unknown user",
        """
        groups:
          warehouse: [jim]
        rules:
          - {action: block, users: [jon]}
        """,
        {},
        "rules.yaml:4: users: unknown user 'jon' (a user exists when `users` or a group lists them)",
    ),
    (
        "empty users list (it would silently mean everyone)",
        """
        rules:
          - {action: block, users: []}
        """,
        {},
        "rules.yaml:2: users: empty list (omit the key to mean everyone)",
    ),
    (
        "override without a reason",
        """
        users:
          alice:
            overrides:
              - ip_lockdown: false
                expires: 2026-12-31
        """,
        {},
        "rules.yaml:4: users.alice.overrides[0]: 'reason' is required (why this user is an exception)",
    ),
    (
        "override that changes nothing",
        """
        users:
          alice:
            overrides:
              - {reason: Just because, expires: 2026-12-31}
        """,
        {},
        "rules.yaml:4: users.alice.overrides[0]: changes nothing "
        "(set one of: ip_lockdown, allowed_networks, mobile_any_ip, require_2fa, login_hours)",
    ),
    (
        "unknown key in an override",
        """
        users:
          alice:
            overrides:
              - ip_lockdown: false
                reason: Travels
                expiry: 2026-12-31
        """,
        {},
        "rules.yaml:6: users.alice.overrides[0]: unknown key 'expiry' (expected one of: allowed_networks, by, "
        "expires, granted, ip_lockdown, login_hours, mobile_any_ip, reason, require_2fa)",
    ),
    (
        "bad login_hours days",
        """
        defaults:
          login_hours:
            days: mon-fry
            from: '07:00'
            to: '19:00'
        """,
        {},
        "rules.yaml:3: defaults.login_hours.days: unknown day 'fry' (expected mon, tue, wed, thu, fri, sat or sun)",
    ),
    (
        "bad login_hours time",
        """
        defaults:
          login_hours: {from: 7am, to: '19:00'}
        """,
        {},
        "rules.yaml:2: defaults.login_hours.from: expected a time like '07:00' (HH:MM, 00:00-23:59), got '7am'",
    ),
    (
        "unquoted time, read by YAML as a number",
        """
        defaults:
          login_hours:
            from: '07:00'
            to: 19:00
        """,
        {},
        "rules.yaml:4: defaults.login_hours.to: write times in quotes, like '19:00' "
        "(YAML read this one as the number 1140)",
    ),
    (
        "login_hours from == to",
        """
        defaults:
          login_hours:
            from: '07:00'
            to: '07:00'
        """,
        {},
        "rules.yaml:4: defaults.login_hours: 'from' and 'to' are both 07:00; "
        "write a real window (it may pass midnight, like '22:00' to '06:00')",
    ),
    (
        "login_hours without 'to'",
        """
        defaults:
          login_hours: {from: '07:00'}
        """,
        {},
        "rules.yaml:2: defaults.login_hours: 'to' is required",
    ),
    (
        "unknown timezone in login_hours",
        """
        defaults:
          login_hours: {timezone: Europe/Londn, from: '07:00', to: '19:00'}
        """,
        {},
        "rules.yaml:2: defaults.login_hours.timezone: unknown timezone 'Europe/Londn'",
    ),
    (
        "unknown timezone of a user",
        """
        users:
          alice:
            timezone: Mars/Olympus_Mons
        """,
        {},
        "rules.yaml:3: users.alice.timezone: unknown timezone 'Mars/Olympus_Mons'",
    ),
    (
        "rule without an action",
        """
        rules:
          - title: Forgot the action
            function: '*'
        """,
        {},
        "rules.yaml:2: rule rules.rules[0]: 'action' is required (allow or block)",
    ),
    (
        "rule with an action that is neither allow nor block",
        """
        rules:
          - title: Wrong word
            action: deny
        """,
        {},
        "rules.yaml:3: rule rules.rules[0]: action must be allow or block, got 'deny'",
    ),
    (
        "bad expires",
        """
        rules:
          - action: block
            expires: next friday
        """,
        {},
        "rules.yaml:3: rule rules.rules[0].expires: expected a date like 2026-12-31 or a date-time, got 'next friday'",
    ),
    (
        "path pattern not starting with /",
        """
        functions:
          billing:
            paths: ['billing/**']
        """,
        {},
        "rules.yaml:3: functions.billing.paths: a path pattern must start with '/', got 'billing/**'",
    ),
    (
        "'**' that is not a whole segment",
        """
        functions:
          export:
            paths:
              - '/**export'
        """,
        {},
        "rules.yaml:4: functions.export.paths: '**' must be a whole segment, as in '/a/**/b', got '/**export'",
    ),
    (
        "function without paths",
        """
        functions:
          billing: {methods: [GET]}
        """,
        {},
        "rules.yaml:2: functions.billing: 'paths' is required",
    ),
    (
        "bad HTTP method",
        """
        functions:
          billing: {paths: ['/billing'], methods: ['GE T']}
        """,
        {},
        "rules.yaml:2: functions.billing.methods: expected an HTTP method like POST, got 'GE T'",
    ),
    (
        "a channel named web (the default channel)",
        """
        channels:
          web: {user_agents: ['Mozilla']}
        """,
        {},
        "rules.yaml:2: channel name 'web' is reserved: it is the channel of every other request",
    ),
    (
        "a channel with neither user_agents nor paths",
        """
        channels:
          kiosk: {}
        """,
        {},
        "rules.yaml:2: channels.kiosk: needs user_agents or paths (or both)",
    ),
    (
        "mobile_any_ip with no mobile channel defined",
        """
        defaults:
          ip_lockdown: true
          mobile_any_ip: true
        """,
        {},
        "rules.yaml:3: mobile_any_ip: there is no channel named 'mobile' to exempt; define it under channels",
    ),
    (
        "a group that is not a list",
        """
        groups:
          warehouse: jim
        """,
        {},
        "rules.yaml:2: groups.warehouse: expected a list of usernames, got str 'jim'",
    ),
    (
        "rules that are not a list",
        """
        rules:
          action: block
        """,
        {},
        "rules.yaml:1: rules: expected a list of rules, got a mapping",
    ),
]


@pytest.mark.parametrize(
    ("text", "extra", "expected", "options"),
    [(case[1], case[2], case[3], case[4] if len(case) > 4 else {}) for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_policy_is_reported_at_its_line(
    policy_problems: ProblemsOf, text: str, extra: dict[str, str], expected: str, options: dict[str, bool]
) -> None:
    problems = policy_problems(text, extra_files=extra, **options)
    assert expected in problems, problems


def test_yaml_syntax_errors_name_the_file_and_line(policy_problems: ProblemsOf) -> None:
    problems = policy_problems("rules:\n  - {action: block\n  - {action: allow}\n")
    assert len(problems) == 1
    assert problems[0].startswith("rules.yaml:3: ")


def test_a_missing_policy_file_is_a_problem(policy_problems: ProblemsOf) -> None:
    problems = policy_problems("rules: []\n", policy_files=["rules.yaml", "missing.yaml"])
    assert "missing.yaml:1: file not found" in problems


def test_an_unreadable_geoip_database_is_reported_at_the_main_files_geoip_line(policy_problems: ProblemsOf) -> None:
    problems = policy_problems("rules: []\n", geoip=False, main="geoip: {database: nowhere.mmdb}\n")
    assert len(problems) == 1
    assert problems[0].startswith("gateway.yaml:3: geoip.database: cannot open GeoIP database")


def test_every_problem_is_reported_in_one_pass(policy_problems: ProblemsOf) -> None:
    problems = policy_problems(
        """
        functions:
          billing: {paths: ['billing']}
        rules:
          - {action: deny}
          - {action: block, function: nothing}
          - {action: block, networks: [300.1.1.1]}
        """
    )
    lines = sorted(int(p.split(":")[1]) for p in problems)
    assert lines == [2, 4, 5, 6], problems


def test_expired_rules_and_overrides_load_fine_and_are_listed(make_policy: PolicyMaker) -> None:
    policy = make_policy(
        """
        groups: {sales: [alice]}
        users:
          alice:
            overrides:
              - {ip_lockdown: false, reason: Conference week, expires: 2026-10-01}
        rules:
          - {id: old-ban, title: Old ban, action: block, expires: 2026-11-01}
          - {id: new-ban, action: block, expires: 2026-12-01}
        """,
        now=datetime(2026, 11, 23, tzinfo=UTC),
    )
    assert [line.split(": ", 1)[1] for line in policy.expired_at_load] == [
        "rule old-ban (Old ban) expired on 2026-11-01",
        "override users.alice.overrides[0] (Conference week) expired on 2026-10-01",
    ]
    assert [line.split(": ", 1)[0].rsplit("/", 1)[1] for line in policy.expired_at_load] == [
        "rules.yaml:7",
        "rules.yaml:5",
    ]
