"""The worked cases of DESIGN.md §3.3, against the §2 example policy (tests/policy/fixtures).

Each test is named after the worked case it checks.
"""

from __future__ import annotations

import pytest

from gateway.policy import Policy
from tests.policy.world import (
    FRANCE,
    GERMANY_V6,
    HOME,
    IRELAND,
    MOBILE_APP,
    MONDAY,
    OFFICE,
    OFFICE_V6,
    PRIVATE,
    SYDNEY,
    WAREHOUSE,
    make_facts,
)

CLOCK_IN = "/timeclock/clock-in"


def test_worked_case_clock_in_jim_at_the_warehouse_ip_may_clock_in(example: Policy) -> None:
    decision = example.decide(make_facts(WAREHOUSE, CLOCK_IN, user="jim", method="POST"))
    assert (decision.action, decision.enforced, decision.reason) == ("allow", True, None)
    assert decision.rule_id == "rules.rules[1]"
    assert decision.rule_title == "Warehouse clocks in at the warehouse"
    assert decision.functions == ("clock-in",)


def test_worked_case_clock_in_alice_may_not_clock_in_at_the_warehouse(example: Policy) -> None:
    decision = example.decide(make_facts(WAREHOUSE, CLOCK_IN, user="alice", method="POST"))
    assert (decision.action, decision.enforced, decision.reason) == ("deny", True, "function_blocked")
    assert decision.rule_id == "rules.rules[0]"


def test_worked_case_clock_in_warehouse_ip_in_allowed_networks_named_function_decides_first(
    example: Policy,
) -> None:
    """193.167.1.70 is in allowed_networks: that allow matches, with the longest prefix, yet loses."""
    decision = example.decide(make_facts(WAREHOUSE, CLOCK_IN, user="alice", method="POST"), explain=True)
    by_id = {entry.rule_id: entry for entry in decision.trace}
    lockdown_allow = by_id["defaults.allowed_networks"]
    assert lockdown_allow.matched and not lockdown_allow.deciding
    assert lockdown_allow.specificity == (0, 0, 0, 128, 0, 0, 0)
    assert by_id["rules.rules[0]"].deciding
    assert by_id["rules.rules[0]"].specificity == (0, 1, 0, -1, 0, 0, 1)


def test_worked_case_clock_in_bob_of_the_warehouse_group_may_clock_in_there_too(example: Policy) -> None:
    decision = example.decide(make_facts(WAREHOUSE, CLOCK_IN, user="bob", method="POST"))
    assert decision.action == "allow"
    assert decision.rule_id == "rules.rules[1]"


@pytest.mark.parametrize(
    "ip",
    [HOME, FRANCE, OFFICE, OFFICE_V6],
    ids=["from home", "from abroad", "from the office (not the warehouse line)", "from the office over IPv6"],
)
def test_worked_case_clock_in_jim_may_not_clock_in_from_home_or_anywhere_but_the_warehouse(
    example: Policy, ip: str
) -> None:
    decision = example.decide(make_facts(ip, CLOCK_IN, user="jim", method="POST"))
    assert (decision.action, decision.reason, decision.rule_id) == ("deny", "function_blocked", "rules.rules[0]")


@pytest.mark.parametrize(
    ("ip", "user", "path"),
    [
        (HOME, "jim", "/contacts"),
        (HOME, "bob", "/"),
        (HOME, "pat", "/projects/7"),
        (IRELAND, "jim", "/contacts"),
        (PRIVATE, "pat", "/contacts"),
        (GERMANY_V6, "bob", "/contacts"),
        (HOME, "maria", "/contacts"),
        (HOME, None, "/contacts"),
    ],
    ids=[
        "jim at home",
        "bob at home, the start page",
        "pat at home",
        "jim in Ireland",
        "pat on an address with no country",
        "bob over IPv6 abroad",
        "a user the policy does not name",
        "an anonymous request for a non-public page",
    ],
)
def test_worked_case_lockdown_anyone_outside_allowed_networks_is_blocked(
    example: Policy, ip: str, user: str | None, path: str
) -> None:
    decision = example.decide(make_facts(ip, path, user=user))
    assert (decision.action, decision.enforced) == ("deny", True)
    assert (decision.reason, decision.rule_id) == ("ip_not_allowed", "defaults.ip_lockdown")


@pytest.mark.parametrize(
    ("ip", "user"),
    [(OFFICE, "jim"), (WAREHOUSE, "bob"), (OFFICE_V6, "pat"), (OFFICE, "maria"), (OFFICE, None)],
    ids=["jim in the office", "bob at the warehouse", "pat over IPv6", "an unnamed user", "anonymous"],
)
def test_worked_case_lockdown_inside_allowed_networks_the_crm_opens(
    example: Policy, ip: str, user: str | None
) -> None:
    decision = example.decide(make_facts(ip, "/contacts", user=user))
    assert (decision.action, decision.rule_id) == ("allow", "defaults.allowed_networks")


@pytest.mark.parametrize(
    "ip", [HOME, FRANCE, SYDNEY, GERMANY_V6], ids=["home", "France", "Australia", "Germany over IPv6"]
)
def test_worked_case_lockdown_alice_override_may_use_the_crm_from_anywhere(example: Policy, ip: str) -> None:
    decision = example.decide(make_facts(ip, "/contacts/42", user="alice"))
    assert (decision.action, decision.enforced) == ("allow", True)
    assert decision.rule_id == "users.alice.overrides[0]"
    assert decision.rule_title == "Travels to client sites, IP changes daily"


@pytest.mark.parametrize(
    "ip", [HOME, FRANCE, OFFICE, WAREHOUSE], ids=["home", "abroad", "the office", "the warehouse"]
)
def test_worked_case_lockdown_alice_still_may_not_clock_in_anywhere(example: Policy, ip: str) -> None:
    decision = example.decide(make_facts(ip, CLOCK_IN, user="alice", method="POST"))
    assert (decision.action, decision.reason, decision.rule_id) == ("deny", "function_blocked", "rules.rules[0]")


@pytest.mark.parametrize(
    ("ip", "user"),
    [(HOME, "jim"), (HOME, "pat"), (OFFICE, "bob"), (HOME, None), (HOME, "maria")],
    ids=["jim at home", "pat at home", "bob in the office", "anonymous", "an unnamed user"],
)
def test_worked_case_lockdown_anyone_on_channel_mobile_passes_from_any_ip(
    example: Policy, ip: str, user: str | None
) -> None:
    decision = example.decide(make_facts(ip, "/api/mobile/jobs/7", user=user, ua=MOBILE_APP))
    assert decision.channel == "mobile"
    assert (decision.action, decision.enforced) == ("allow", True)
    assert decision.rule_id in ("defaults.mobile_any_ip", "defaults.allowed_networks")


@pytest.mark.parametrize(
    "ip", [HOME, FRANCE, PRIVATE], ids=["GB home line", "abroad (FR)", "no country"]
)
def test_worked_case_lockdown_mobile_passes_from_any_ip_even_where_a_report_only_rule_would_deny(
    example: Policy, ip: str
) -> None:
    """The request is forwarded whatever the trial rule 'Office only for EU staff' thinks."""
    decision = example.decide(make_facts(ip, "/api/mobile/jobs/7", user="jim", ua=MOBILE_APP))
    assert decision.allowed


@pytest.mark.parametrize(
    ("ip", "user", "path"),
    [
        (HOME, "jim", "/api/mobile/export"),
        (HOME, "alice", "/api/mobile/contacts/export"),
        (OFFICE, "bob", "/api/mobile/export"),
        (FRANCE, None, "/api/mobile/export"),
    ],
    ids=["jim at home", "alice, exempt from the lock-down", "bob in the office", "anonymous abroad"],
)
def test_worked_case_lockdown_mobile_but_not_to_export(
    example: Policy, ip: str, user: str | None, path: str
) -> None:
    decision = example.decide(make_facts(ip, path, user=user, ua=MOBILE_APP))
    assert decision.channel == "mobile"
    assert (decision.action, decision.enforced) == ("deny", True)
    assert (decision.reason, decision.rule_id) == ("function_blocked", "rules.rules[3]")


def test_worked_case_lockdown_mobile_user_agent_on_a_web_path_is_channel_web_and_locked_down(
    example: Policy,
) -> None:
    decision = example.decide(make_facts(HOME, "/contacts", user="jim", ua=MOBILE_APP))
    assert decision.channel == "web"
    assert (decision.action, decision.reason, decision.rule_id) == (
        "deny",
        "ip_not_allowed",
        "defaults.ip_lockdown",
    )


@pytest.mark.parametrize(
    ("ip", "path"),
    [(OFFICE, "/billing/2026/11"), (WAREHOUSE, "/invoices/17"), (OFFICE_V6, "/billing"), (HOME, "/billing/x")],
    ids=["in the office", "at the warehouse line", "office over IPv6", "from home"],
)
def test_worked_case_pat_is_blocked_from_billing_in_the_office_too(example: Policy, ip: str, path: str) -> None:
    decision = example.decide(make_facts(ip, path, user="pat"))
    assert decision.functions == ("billing",)
    assert (decision.action, decision.reason, decision.rule_id) == ("deny", "function_blocked", "rules.rules[2]")


def test_worked_case_others_may_see_billing_in_the_office(example: Policy) -> None:
    decision = example.decide(make_facts(OFFICE, "/billing/2026/11", user="jim"))
    assert (decision.action, decision.rule_id) == ("allow", "defaults.allowed_networks")


def test_worked_case_a_user_the_files_do_not_name_has_no_group_and_the_defaults(example: Policy) -> None:
    assert not example.known_user("maria")
    assert example.groups_of("maria") == frozenset()
    decision = example.decide(make_facts(WAREHOUSE, CLOCK_IN, user="maria", method="POST"))
    assert decision.rule_id == "rules.rules[0]"  # not in warehouse: blocked like everyone
    assert decision.settings == example.settings_for(None, MONDAY)


@pytest.mark.parametrize(
    ("ip", "path"),
    [(FRANCE, "/login"), (SYDNEY, "/static/app.css"), (PRIVATE, "/favicon.ico"), (HOME, "/login/")],
    ids=["login page abroad", "static files abroad", "favicon from an unknown address", "login page, trailing slash"],
)
def test_worked_case_public_function_is_reachable_anonymously_so_an_exempt_user_abroad_can_log_in(
    example: Policy, ip: str, path: str
) -> None:
    decision = example.decide(make_facts(ip, path))
    assert decision.public
    assert (decision.action, decision.enforced) == ("allow", True)
    assert decision.rule_id is not None and decision.rule_id.startswith("functions.")


@pytest.mark.parametrize(
    ("ip", "user", "action", "reason"),
    [
        (FRANCE, "alice", "allow", None),
        (HOME, "jim", "deny", "ip_not_allowed"),
        (OFFICE, "jim", "allow", None),
    ],
    ids=[
        "alice abroad: her exemption lets the login through",
        "jim from home: the dismissed-employee story, the right password is not enough",
        "jim in the office",
    ],
)
def test_worked_case_the_login_post_is_judged_with_the_submitted_username(
    example: Policy, ip: str, user: str, action: str, reason: str | None
) -> None:
    decision = example.decide(make_facts(ip, "/login", user=user, method="POST"))
    assert (decision.action, decision.reason) == (action, reason)
