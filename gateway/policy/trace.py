"""The rule-by-rule trace of ``explain``, found the slow, obvious way.

``explain`` is for admins, not the hot path: it walks every rule, checks each
condition on its own and says which one failed. The verdict itself always comes
from the engine's indexed decision, so ``explain`` can never tell a different
story from the one the gateway acts on (the tests compare the two).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.policy.model import Decision, RequestFacts, TraceEntry
from gateway.policy.networks import entry_contains, judged_address, v6_prefix
from gateway.policy.rules import NO_NETWORK, Key, Rule, SettingsSegment

if TYPE_CHECKING:
    from gateway.policy.engine import Policy

DEFAULT_RULE = "default_action"


def check_rule(
    rule: Rule,
    facts: RequestFacts,
    channel: str,
    functions: tuple[str, ...],
    user: str | None,
    groups: frozenset[str],
    country: str | None,
) -> tuple[bool, Key, str] | None:
    """Does ``rule`` match, with which key, and why (not)? None: not about this request.

    Rules about other functions are left out, and so are ``*`` rules about other
    people (in a big policy they would bury the answer); a named-function rule
    about other people stays, with why it does not apply ("alice is not in
    groups warehouse" is often the question).
    """
    if rule.function is not None and rule.function not in functions:
        return None
    misses: list[str] = []
    who = user if user is not None else "an anonymous request"
    if rule.users is not None and (user is None or user not in rule.users):
        misses.append(f"{who} is not one of users {', '.join(sorted(rule.users))}")
    if rule.groups is not None and (user is None or rule.groups.isdisjoint(groups)):
        misses.append(f"{who} is not in groups {', '.join(sorted(rule.groups))}")
    if misses and rule.function is None:
        return None
    network = NO_NETWORK
    shown = rule.describe()
    if rule.networks is not None:
        address = judged_address(facts.client_ip)
        blocks = [b for b in (entry_contains(e, address) for e in rule.networks) if b is not None]
        if blocks:
            block = max(blocks, key=v6_prefix)
            network = v6_prefix(block)
            shown += f" (matched {block}: /{network} in IPv6 terms)"
        else:
            misses.append(f"{address} is in none of its networks")
            network = rule.best_key()[3]
    if rule.countries is not None and (country in rule.countries) == rule.countries_negated:
        codes = ", ".join(sorted(rule.countries))
        if rule.countries_negated:
            misses.append(f"country {country} is one of the excluded {codes}")
        else:
            misses.append(f"country {country or 'unknown (not in the GeoIP database)'} is not one of {codes}")
    if rule.channel is not None and rule.channel != channel:
        misses.append(f"channel is {channel}, not {rule.channel}")
    if not rule.active(facts.at):
        misses.append(f"expired ({rule.expires_text})")
    if misses:
        return False, rule.key(network), "not matched: " + "; ".join(misses)
    if rule.report_only:
        shown += "; report-only: never enforced" + (", logged as would_deny" if rule.block else "")
    return True, rule.key(network), shown


def explained(
    policy: Policy,
    decision: Decision,
    facts: RequestFacts,
    user: str | None,
    groups: frozenset[str],
    public: bool,
    segment: SettingsSegment,
    enforced: Rule | None,
) -> Decision:
    """``decision`` with its trace.

    Order: the gateway's own steps that took part (public function, default
    action, login hours), then the matching rules most specific first, then the
    rules about this request's functions or user that did not match, with why.
    ``user`` is canonical; ``enforced`` is the rule the enforced verdict came from.
    """
    country = policy.geoip.country(judged_address(facts.client_ip)) if policy.geoip is not None else None
    enforced_id = enforced.id if enforced is not None else None
    matched: list[tuple[Key, TraceEntry]] = []
    unmatched: list[TraceEntry] = []
    for rule in policy.rules:
        result = check_rule(rule, facts, decision.channel, decision.functions, user, groups, country)
        if result is None:
            continue
        ok, key, why = result
        deciding = ok and rule.id == decision.rule_id
        if ok and rule.id == enforced_id and not deciding:
            if decision.reason == "outside_login_hours":
                why += "; the rules allow this, but login hours deny it"
            else:
                why += "; the enforced verdict: the deciding rule is report-only, so this one's allow holds"
        entry = TraceEntry(rule.id, rule.title, rule.action, key[:7], ok, deciding, why)
        if ok:
            matched.append((key, entry))
        else:
            unmatched.append(entry)
    matched.sort(key=lambda item: item[0], reverse=True)

    steps: list[TraceEntry] = []
    if user is None and public:
        steps.append(
            TraceEntry(
                decision.rule_id or "", decision.rule_title or "", "allow", (), True, True,
                f"anonymous request to public function(s) {', '.join(decision.functions)}: "
                "the rules below are listed for information only",
            )
        )  # fmt: skip
    elif enforced_id is None:
        steps.append(
            TraceEntry(
                DEFAULT_RULE, f"No rule matched: default_action {policy.default_action}",
                "allow" if policy.default_action == "allow" else "block", (), True,
                decision.rule_id == DEFAULT_RULE, "no enforced rule matches this request",
            )
        )  # fmt: skip
    hours = segment.settings.login_hours
    if user is not None and hours is not None:
        inside = hours.contains(facts.at, segment.zone)
        local = facts.at.astimezone(segment.zone)
        steps.append(
            TraceEntry(
                segment.hours_source or "login_hours", segment.hours_title or "Login hours",
                "allow" if inside else "block", (), True, decision.reason == "outside_login_hours",
                f"{local:%a %Y-%m-%d %H:%M %Z} is {'inside' if inside else 'outside'} the window",
            )
        )  # fmt: skip
    return Decision(
        action=decision.action,
        enforced=decision.enforced,
        reason=decision.reason,
        rule_id=decision.rule_id,
        rule_title=decision.rule_title,
        channel=decision.channel,
        functions=decision.functions,
        public=decision.public,
        country=decision.country,
        settings=decision.settings,
        trace=(*steps, *(entry for _, entry in matched), *unmatched),
    )
