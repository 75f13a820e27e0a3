"""Human and JSON renderings of a decision with its trace (``crm-gateway explain``)."""

from __future__ import annotations

from gateway.policy.model import Decision, EffectiveSettings, RequestFacts, TraceEntry

SPECIFICITY_FIELDS = ("priority", "function", "subject", "network", "country", "channel", "block")


def _verdict(decision: Decision) -> str:
    if decision.action == "allow":
        return "ALLOW"
    if decision.enforced:
        return f"DENY ({decision.reason})"
    return f"WOULD DENY ({decision.reason}): report-only, the request is forwarded"


def _settings_text(settings: EffectiveSettings) -> str:
    parts = [f"ip_lockdown {'on' if settings.ip_lockdown else 'off'}"]
    if settings.allowed_networks:
        parts.append("allowed_networks " + ", ".join(str(n) for n in settings.allowed_networks))
    parts.append(f"mobile_any_ip {'on' if settings.mobile_any_ip else 'off'}")
    parts.append(f"2FA {'required' if settings.require_2fa else 'not required'}")
    if settings.login_hours is not None:
        parts.append(f"login hours {settings.login_hours.describe()} read in {settings.timezone}")
    else:
        parts.append("no login hours")
    return "; ".join(parts)


def _entry_lines(entry: TraceEntry) -> list[str]:
    mark = "*" if entry.deciding else " "
    key = str(entry.specificity) if entry.specificity else "-"
    return [
        f"  {mark} {entry.rule_id}  {entry.action}  {key}  {entry.title}",
        f"        {entry.why}",
    ]


def format_explain(facts: RequestFacts, decision: Decision) -> str:
    """Text for ``crm-gateway explain``: the verdict, the request, then the rules."""
    lines = [
        _verdict(decision),
        f"  request    {facts.method} {facts.path} from {facts.client_ip} "
        f"as {facts.user if facts.user is not None else 'anonymous'} at {facts.at.isoformat()}",
        f"  channel    {decision.channel}  (User-Agent: {facts.user_agent!r})",
        f"  functions  {', '.join(decision.functions) or '(none)'}{'  [public]' if decision.public else ''}",
        f"  country    {decision.country or 'unknown'}",
        f"  decided by {decision.rule_id or '-'}: {decision.rule_title or '-'}",
        f"  settings   {_settings_text(decision.settings)}",
    ]
    if decision.settings.overrides:
        lines.append(f"  overrides  {'; '.join(decision.settings.overrides)}")
    if decision.settings.require_2fa and decision.allowed and facts.user is not None:
        lines.append("  2FA        the session is usable only after a valid TOTP code")
    matched = [e for e in decision.trace if e.matched]
    unmatched = [e for e in decision.trace if not e.matched]
    lines.append("")
    lines.append(f"Matching, most specific first (* decides); specificity = ({', '.join(SPECIFICITY_FIELDS)}):")
    lines.extend(line for entry in matched for line in _entry_lines(entry))
    if not matched:
        lines.append("    (none)")
    if unmatched:
        lines.append("")
        lines.append("Not matching (rules about this request's functions or user):")
        lines.extend(line for entry in unmatched for line in _entry_lines(entry))
    return "\n".join(lines)


def explain_json(facts: RequestFacts, decision: Decision) -> dict[str, object]:
    """One JSON-ready object for ``explain --json``."""
    settings = decision.settings
    return {
        "decision": decision.action,
        "enforced": decision.enforced,
        "reason": decision.reason,
        "rule_id": decision.rule_id,
        "rule_title": decision.rule_title,
        "channel": decision.channel,
        "functions": list(decision.functions),
        "public": decision.public,
        "country": decision.country,
        "user": facts.user,
        "client_ip": str(facts.client_ip),
        "method": facts.method,
        "path": facts.path,
        "at": facts.at.isoformat(),
        "settings": {
            "ip_lockdown": settings.ip_lockdown,
            "allowed_networks": [str(n) for n in settings.allowed_networks],
            "mobile_any_ip": settings.mobile_any_ip,
            "require_2fa": settings.require_2fa,
            "login_hours": settings.login_hours.describe() if settings.login_hours else None,
            "timezone": settings.timezone,
            "overrides": list(settings.overrides),
        },
        "specificity_fields": list(SPECIFICITY_FIELDS),
        "trace": [
            {
                "rule_id": entry.rule_id,
                "title": entry.title,
                "action": entry.action,
                "specificity": list(entry.specificity),
                "matched": entry.matched,
                "deciding": entry.deciding,
                "why": entry.why,
            }
            for entry in decision.trace
        ],
    }
