"""``check`` warnings (DESIGN.md §6) and the ``overrides`` review report."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.policy import Policy
from tests.policy.world import MONDAY, PolicyMaker


def short(lines: list[str]) -> list[str]:
    """Warnings with the folder of their file dropped: ``rules.yaml:19: ...``."""
    return [line.split("/")[-1] if line.startswith("/") else line for line in lines]


def _strip(line: str) -> str:
    head, _, message = line.partition(": ")
    return f"{Path(head).name}: {message}"


def test_the_example_policy_warns_about_alices_open_ended_override_and_unenrolled_2fa(example: Policy) -> None:
    assert [_strip(line) for line in example.warnings(MONDAY)] == [
        "people.yaml:18: override users.alice.overrides[1] (Covers the Saturday shift) has no expiry; "
        "add `expires` so the exception ends by itself",
        "rules.yaml:19: require_2fa holds for 'alice', who has no enrolled TOTP secret "
        "(run `crm-gateway totp enroll alice`)",
        "rules.yaml:19: require_2fa holds for 'pat', who has no enrolled TOTP secret "
        "(run `crm-gateway totp enroll pat`)",
    ]


LOCKOUT_CASES = [
    (
        "a priority ban on everything is a full lock-out",
        """
        defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24, '2001:db8:10::/48']}
        groups: {warehouse: [jim]}
        rules:
          - {id: freeze, action: block, priority: 1}
        """,
        [
            "rules.yaml:4: full lock-out: the rules block every user (and anonymous requests) on the web "
            "from every address in allowed_networks (e.g. jim from 193.167.2.0 by freeze)"
        ],
    ),
    (
        "blocking the office range itself is a full lock-out",
        """
        defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24]}
        rules:
          - {id: oops, action: block, networks: [193.167.2.0/25, 193.167.2.128/25]}
        """,
        [
            "rules.yaml:3: full lock-out: the rules block every user (and anonymous requests) on the web "
            "from every address in allowed_networks (e.g. a user the policy does not name from 193.167.2.0 by oops)"
        ],
    ),
    (
        "without allowed_networks, a block on everything locks everyone out from any address",
        """
        rules:
          - {id: closed, action: block}
        """,
        [
            "rules.yaml:2: full lock-out: the rules block every user (and anonymous requests) on the web "
            "from any address (e.g. a user the policy does not name from 192.0.2.1 by closed)"
        ],
    ),
    (
        "a user blocked from every allowed network is named",
        """
        defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24, 193.167.1.70]}
        groups: {warehouse: [jim, bob]}
        rules:
          - {id: bob-out, action: block, users: [bob]}
        """,
        [
            "rules.yaml:4: user 'bob' is blocked on the web from every address in allowed_networks "
            "(e.g. from 193.167.2.0 by bob-out)"
        ],
    ),
    (
        "a user allowed from at least one allowed network is not locked out",
        """
        defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24, 193.167.1.70]}
        groups: {warehouse: [jim, bob]}
        rules:
          - {id: bob-not-lan, action: block, users: [bob], networks: [193.167.2.0/24]}
        """,
        [],
    ),
    (
        "the lock-down with its allowed_networks is no lock-out",
        """
        defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24]}
        groups: {warehouse: [jim, bob]}
        """,
        [],
    ),
]


@pytest.mark.parametrize(("policy", "expected"), [c[1:] for c in LOCKOUT_CASES], ids=[c[0] for c in LOCKOUT_CASES])
def test_lockout_warnings(make_policy: PolicyMaker, policy: str, expected: list[str]) -> None:
    warnings = make_policy(policy).warnings(MONDAY)
    assert [_strip(line) for line in warnings if "lock-out" in line or "is blocked" in line] == expected


def test_lockout_check_ignores_login_hours(make_policy: PolicyMaker) -> None:
    """Run on a Saturday, outside everyone's hours: still no lock-out to report."""
    policy = make_policy(
        """
        defaults:
          ip_lockdown: true
          allowed_networks: [193.167.2.0/24]
          login_hours: {timezone: Europe/London, days: mon-fri, from: '07:00', to: '19:00'}
        groups: {warehouse: [jim]}
        """
    )
    assert policy.warnings(datetime(2026, 11, 28, 12, tzinfo=UTC)) == []


RELAXED = """
channels:
  mobile: {user_agents: ['^AcmeCRM-Mobile/'], paths: ['/api/mobile/**']}
defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24], mobile_any_ip: true}
groups: {warehouse: [jim]}
"""

EXPORT_CASES = [
    (
        "an export function with no block on the mobile channel",
        "functions:\n  export: {paths: ['/**/export']}\n",
        [
            "rules.yaml:2: export-like function 'export' is reachable on the relaxed channel 'mobile' from outside "
            "allowed_networks (for jim, a user the policy does not name, anonymous requests); "
            "add a block rule for function export on channel mobile"
        ],
    ),
    (
        "the example's block rule on the mobile channel closes it",
        """
        functions:
          export: {paths: ['/**/export']}
        rules:
          - {action: block, function: export, channel: mobile}
        """,
        [],
    ),
    (
        "a block for one user leaves others reaching it",
        """
        functions:
          export: {paths: ['/**/export']}
        rules:
          - {action: block, function: export, channel: mobile, users: [jim]}
        """,
        [
            "rules.yaml:2: export-like function 'export' is reachable on the relaxed channel 'mobile' from outside "
            "allowed_networks (for a user the policy does not name, anonymous requests); "
            "add a block rule for function export on channel mobile"
        ],
    ),
    (
        "a path with 'download' makes a function export-like",
        "functions:\n  contacts-dump: {paths: ['/contacts/download']}\n",
        ["rules.yaml:2: export-like function 'contacts-dump'"],
    ),
    (
        "a path with 'csv' makes a function export-like",
        "functions:\n  reports: {paths: ['/reports/*/csv']}\n",
        ["rules.yaml:2: export-like function 'reports'"],
    ),
    (
        "export_like: true flags a function the names do not give away",
        "functions:\n  bulk: {paths: ['/contacts/bulk'], methods: [POST], export_like: true}\n",
        ["rules.yaml:2: export-like function 'bulk'"],
    ),
    (
        "export_like: false silences the guess",
        "functions:\n  export-settings: {paths: ['/settings/export'], export_like: false}\n",
        [],
    ),
    (
        "a function that is not export-like is not reported",
        "functions:\n  contacts: {paths: ['/contacts/**']}\n",
        [],
    ),
]


@pytest.mark.parametrize(("functions", "expected"), [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_export_like_function_on_a_relaxed_channel(
    make_policy: PolicyMaker, functions: str, expected: list[str]
) -> None:
    policy = make_policy(functions, extra_files={"people.yaml": RELAXED})
    warnings = [_strip(line) for line in policy.warnings(MONDAY) if "export-like" in line]
    assert len(warnings) == len(expected)
    for warning, start in zip(warnings, expected, strict=True):
        assert warning.startswith(start)


def test_require_2fa_without_a_totp_section(make_policy: PolicyMaker) -> None:
    policy = make_policy("defaults:\n  require_2fa: true\ngroups: {warehouse: [jim]}\n")
    assert [_strip(line) for line in policy.warnings(MONDAY)] == [
        "rules.yaml:2: require_2fa is on but the main file has no totp section: nobody can give a second factor"
    ]


@pytest.mark.parametrize(
    ("secrets", "unenrolled"),
    [
        (None, ["bob", "jim"]),
        ("jim: {secret: JBSWY3DPEHPK3PXP}\n", ["bob"]),
        ("JIM: {secret: JBSWY3DPEHPK3PXP}\nbob: {secret: KRSXG5CTMVRXEZLU}\n", []),
        ("jim: {enrolled: yesterday}\n", ["bob", "jim"]),
    ],
    ids=["no secrets file: nobody is enrolled", "jim enrolled", "both (names folded)", "an entry without a secret"],
)
def test_require_2fa_for_users_without_a_secret(
    make_policy: PolicyMaker, tmp_path: Path, secrets: str | None, unenrolled: list[str]
) -> None:
    if secrets is not None:
        (tmp_path / "totp-secrets.yaml").write_text(secrets, encoding="utf-8")
    policy = make_policy(
        """
        groups: {warehouse: [jim, bob]}
        users:
          pat:
            overrides:
              - {require_2fa: false, reason: Shared kiosk account, expires: 2027-01-31}
        defaults:
          require_2fa: true
        """,
        main="totp: {secrets_file: totp-secrets.yaml}\n",
    )
    warned = [line for line in policy.warnings(MONDAY) if "require_2fa" in line]
    assert [line.split("'")[1] for line in warned] == unenrolled
    assert all(_strip(line).startswith("rules.yaml:7: ") for line in warned)  # defaults.require_2fa


def test_an_expired_override_is_reported(make_policy: PolicyMaker) -> None:
    policy = make_policy(
        """
        groups: {sales: [alice]}
        users:
          alice:
            overrides:
              - {ip_lockdown: false, reason: Conference week, expires: 2026-10-01}
        """
    )
    assert [_strip(line) for line in policy.warnings(MONDAY)] == [
        "rules.yaml:5: override users.alice.overrides[0] (Conference week) expired on 2026-10-01; "
        "it no longer applies, remove it"
    ]


REVIEW_POLICY = """
groups: {staff: [ann, ben, cat, dan]}
users:
  ann:
    overrides:
      - {ip_lockdown: false, reason: Trade fair, expires: 2026-11-30, granted: 2026-11-20, by: maria}
  ben:
    overrides:
      - {require_2fa: false, reason: Broken phone, expires: 2026-11-01, granted: 2026-10-20, by: maria}
  cat:
    overrides:
      - {allowed_networks: [81.2.69.0/24], reason: Works from home, granted: 2026-03-01, by: tom}
  dan:
    overrides:
      - {login_hours: {from: '22:00', to: '06:00'}, reason: Night shift, expires: 2027-06-30}
"""


def test_overrides_report_json_sorts_overrides_into_review_lists(make_policy: PolicyMaker) -> None:
    report = make_policy(REVIEW_POLICY).overrides_report_json(MONDAY, 90)
    ids = {name: [row["id"] for row in rows] for name, rows in report.items() if isinstance(rows, list)}
    assert ids == {
        "active": ["users.ann.overrides[0]", "users.cat.overrides[0]", "users.dan.overrides[0]"],
        "expiring": ["users.ann.overrides[0]"],
        "expired": ["users.ben.overrides[0]"],
        "review": ["users.cat.overrides[0]"],
        "undated": ["users.dan.overrides[0]"],
    }
    ann = report["active"][0]  # type: ignore[index]
    assert {k: ann[k] for k in ("user", "keys", "reason", "granted", "by", "expires")} == {
        "user": "ann",
        "keys": ["ip_lockdown"],
        "reason": "Trade fair",
        "granted": "2026-11-20",
        "by": "maria",
        "expires": "2026-11-30",
    }


def test_overrides_report_text(make_policy: PolicyMaker) -> None:
    text = make_policy(REVIEW_POLICY).overrides_report(MONDAY, 90)
    assert "Active: 3" in text
    assert "Expiring within 14 days: 1" in text
    assert "Expired: 1" in text
    assert "Granted more than 90 days ago (review them): 1" in text
    assert "No grant date (add `granted` and `by`): 1" in text
    assert "cat          allowed_networks             granted 2026-03-01 by tom, expires never" in text
    assert "reason: Broken phone" in text
    # a longer review period moves cat out of the review list
    assert "Granted more than 365 days ago (review them): 0" in make_policy(REVIEW_POLICY).overrides_report(
        MONDAY, 365
    )
