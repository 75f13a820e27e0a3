"""``explain``: the trace of a decision, as text and as the JSON object of DESIGN.md §1."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway.policy import Policy, explain_json, format_explain
from tests.policy.world import FRANCE, HOME, MOBILE_APP, OFFICE, WAREHOUSE, make_facts

TRACE_KEYS = {"rule_id", "title", "action", "specificity", "matched", "deciding", "why"}


def test_trace_is_empty_without_explain(example: Policy) -> None:
    assert example.decide(make_facts(HOME, "/contacts", user="jim")).trace == ()


def test_explain_json_shape(example: Policy) -> None:
    facts = make_facts(WAREHOUSE, "/timeclock/clock-in", user="alice", method="POST")
    data = explain_json(facts, example.decide(facts, explain=True))
    assert json.loads(json.dumps(data)) == data  # plain JSON types only
    assert {
        "decision": data["decision"],
        "reason": data["reason"],
        "rule_id": data["rule_id"],
        "channel": data["channel"],
        "functions": data["functions"],
        "enforced": data["enforced"],
        "user": data["user"],
        "client_ip": data["client_ip"],
    } == {
        "decision": "deny",
        "reason": "function_blocked",
        "rule_id": "rules.rules[0]",
        "channel": "web",
        "functions": ["clock-in"],
        "enforced": True,
        "user": "alice",
        "client_ip": "193.167.1.70",
    }
    trace = data["trace"]
    assert isinstance(trace, list) and trace
    for entry in trace:
        assert set(entry) == TRACE_KEYS
        assert isinstance(entry["specificity"], list)
        assert entry["action"] in ("allow", "block")
    assert [entry["rule_id"] for entry in trace if entry["deciding"]] == ["rules.rules[0]"]


def test_matching_rules_come_most_specific_first_then_the_rest(example: Policy) -> None:
    facts = make_facts(WAREHOUSE, "/timeclock/clock-in", user="alice", method="POST")
    trace = example.decide(facts, explain=True).trace
    rules = [e for e in trace if e.specificity]
    matched = [e for e in rules if e.matched]
    assert [e.rule_id for e in matched] == [
        "rules.rules[0]",
        "users.alice.overrides[0]",
        "defaults.allowed_networks",
        "defaults.ip_lockdown",
    ]
    assert [e.specificity for e in matched] == sorted((e.specificity for e in matched), reverse=True)
    assert rules.index(matched[-1]) < min(rules.index(e) for e in rules if not e.matched)
    warehouse = next(e for e in trace if e.rule_id == "rules.rules[1]")
    assert not warehouse.matched
    assert warehouse.why == "not matched: alice is not in groups warehouse"


def test_explain_says_why_a_network_rule_matched(example: Policy) -> None:
    trace = example.decide(make_facts(WAREHOUSE, "/timeclock/clock-in", user="jim", method="POST"), explain=True).trace
    entry = next(e for e in trace if e.deciding)
    assert entry.rule_id == "rules.rules[1]"
    assert entry.why == (
        "function clock-in, groups warehouse, networks 193.167.1.70 (matched 193.167.1.70/32: /128 in IPv6 terms)"
    )


def test_explain_of_a_public_function_names_the_gateway_step(example: Policy) -> None:
    trace = example.decide(make_facts(FRANCE, "/login"), explain=True).trace
    assert trace[0].rule_id == "functions.login.public" and trace[0].deciding
    assert not any(e.deciding for e in trace[1:])


def test_explain_of_login_hours(example: Policy) -> None:
    saturday = datetime(2026, 11, 28, 12, tzinfo=UTC)
    decision = example.decide(make_facts(OFFICE, "/contacts", user="jim", at=saturday), explain=True)
    hours = next(e for e in decision.trace if e.rule_id == "defaults.login_hours")
    assert hours.deciding and hours.action == "block"
    assert hours.why == "Sat 2026-11-28 12:00 GMT is outside the window"
    allowing = next(e for e in decision.trace if e.rule_id == "defaults.allowed_networks")
    assert allowing.why.endswith("; the rules allow this, but login hours deny it")


def test_explain_of_default_action(make_policy) -> None:  # type: ignore[no-untyped-def]
    policy = make_policy("rules: []\n", main="default_action: block\n")
    trace = policy.decide(make_facts(HOME), explain=True).trace
    assert [(e.rule_id, e.deciding) for e in trace] == [("default_action", True)]


def test_format_explain_text(example: Policy) -> None:
    facts = make_facts(WAREHOUSE, "/timeclock/clock-in", user="alice", method="POST")
    text = format_explain(facts, example.decide(facts, explain=True))
    lines = text.splitlines()
    assert lines[0] == "DENY (function_blocked)"
    assert "  decided by rules.rules[0]: Nobody clocks in from outside" in lines
    assert "  * rules.rules[0]  block  (0, 1, 0, -1, 0, 0, 1)  Nobody clocks in from outside" in lines
    assert "        not matched: alice is not in groups warehouse" in lines
    assert "  country    GB" in lines


def test_format_explain_of_a_report_only_deny(example: Policy) -> None:
    facts = make_facts(FRANCE, "/api/mobile/jobs", user="jim", ua=MOBILE_APP)
    decision = example.decide(facts, explain=True)
    assert (decision.action, decision.enforced, decision.rule_id) == ("deny", False, "rules.rules[4]")
    text = format_explain(facts, decision)
    assert text.startswith("WOULD DENY (country_not_allowed): report-only, the request is forwarded")
    enforced = next(e for e in decision.trace if e.rule_id == "defaults.mobile_any_ip")
    assert enforced.why.endswith("the deciding rule is report-only, so this one's allow holds")
