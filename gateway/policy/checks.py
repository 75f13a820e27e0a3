"""What ``check`` warns about (DESIGN.md §6) and the ``overrides`` review report.

Warnings come from simulated requests through the real decision code, so they
say what the gateway will do, not what a second reading of the YAML guesses:

1. full lock-out: every user (named ones, a user the files do not name, and
   anonymous requests) is blocked on the web channel from the first address of
   every ``allowed_networks`` entry (any address when there is none), asking
   for ``/``; and, short of that, each named user who is;
2. an override with no expiry, or already expired;
3. an export-like function (name contains ``export``, a path contains
   ``export``, ``csv`` or ``download``, or ``export_like: true``; ``export_like:
   false`` silences the guess) that some user can reach on a channel other than
   ``web`` from an address outside ``allowed_networks``, where the web channel
   would block the same request: the channel is what opens it;
4. ``require_2fa`` holding for a user with no enrolled TOTP secret (the secrets
   file is a YAML mapping ``user: {secret: ...}``; no file = nobody enrolled).

Login hours are not part of these simulations: a lock-out check run on a
Sunday must not report that everyone is locked out.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import yaml

from gateway.policy.model import IPAddress
from gateway.policy.patterns import sample_path
from gateway.policy.rules import expiry_instant
from gateway.policy.spec import DEFAULT_CHANNEL, FunctionSpec, OverrideSpec, canonical_user
from gateway.yamlsrc import Where

if TYPE_CHECKING:
    from gateway.policy.engine import Policy

_UNNAMED = "\x00someone-not-in-the-policy"
_OUTSIDE = tuple(
    ipaddress.ip_address(a) for a in ("192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8:ffff:ffff::1")
)
EXPIRING_DAYS = 14


def _who(user: str | None) -> str:
    if user is None:
        return "anonymous requests"
    return "a user the policy does not name" if user == _UNNAMED else user


def _subjects(policy: Policy) -> list[str | None]:
    return [*policy.users, _UNNAMED, None]


def _first_where(policy: Policy) -> Where:
    defaults = policy.spec.defaults
    if defaults is not None:
        return defaults.where_of("ip_lockdown")
    if policy.rules:
        return policy.where_of(policy.rules[0])
    return Where("(policy)", 1)


def _lockout(policy: Policy, now: datetime) -> list[str]:
    defaults = policy.spec.defaults
    blocks = [block for entry in (defaults.allowed_networks if defaults else ()) for block in entry.blocks]
    addresses: list[IPAddress] = [block.network_address for block in blocks] or list(_OUTSIDE[:1])
    functions = policy.functions_of("GET", "/")
    per_user: list[str] = []
    example: tuple[str, Where] | None = None
    everyone_blocked = True
    for user in _subjects(policy):
        first_block: tuple[IPAddress, Where, str] | None = None
        for address in addresses:
            allowed, rule = policy.rules_allow(address, DEFAULT_CHANNEL, functions, user, now)
            if allowed:
                first_block = None
                break
            if first_block is None:
                rule_id = rule.id if rule is not None else "default_action"
                first_block = (address, policy.where_of(rule) if rule is not None else _first_where(policy), rule_id)
        if first_block is None:
            everyone_blocked = False
            continue
        address, where, rule_id = first_block
        if example is None:
            example = (f"{_who(user)} from {address} by {rule_id}", where)
        if user is not None and user != _UNNAMED:
            per_user.append(
                f"{where}: user {user!r} is blocked on the web from every address in allowed_networks "
                f"(e.g. from {address} by {rule_id})"
            )
    if everyone_blocked and example is not None:
        scope = "every address in allowed_networks" if blocks else "any address"
        return [
            f"{example[1]}: full lock-out: the rules block every user (and anonymous requests) on the web "
            f"from {scope} (e.g. {example[0]})"
        ]
    return per_user


def _overrides(policy: Policy, now: datetime) -> list[str]:
    out: list[str] = []
    for user in policy.spec.users:
        for override in user.overrides:
            if override.expires is None:
                out.append(
                    f"{override.where}: override {override.id} ({override.reason}) has no expiry; "
                    "add `expires` so the exception ends by itself"
                )
            elif expiry_instant(override.expires, policy.office) <= now:
                out.append(
                    f"{override.where}: override {override.id} ({override.reason}) expired on "
                    f"{override.expires.text}; it no longer applies, remove it"
                )
    return out


def export_like(function: FunctionSpec) -> bool:
    if function.export_like is not None:
        return function.export_like
    if "export" in function.name.lower():
        return True
    return any(word in path.lower() for path in function.paths for word in ("export", "csv", "download"))


def _relaxed(policy: Policy, now: datetime) -> list[str]:
    defaults = policy.spec.defaults
    allowed = [block for entry in (defaults.allowed_networks if defaults else ()) for block in entry.blocks]
    outside = [a for a in _OUTSIDE if not any(a.version == b.version and a in b for b in allowed)]
    out: list[str] = []
    for function in policy.spec.functions:
        if not export_like(function) or not function.paths:
            continue
        method = sorted(function.methods)[0] if function.methods else "GET"
        functions = policy.functions_of(method, sample_path(function.paths[0]))
        if function.name not in functions:
            functions = (function.name,)
        for channel in policy.spec.channels:
            reached: list[str] = []
            for user in _subjects(policy):
                for address in outside:
                    on_channel, _ = policy.rules_allow(address, channel.name, functions, user, now)
                    on_web, _ = policy.rules_allow(address, DEFAULT_CHANNEL, functions, user, now)
                    if on_channel and not on_web:
                        reached.append(_who(user))
                        break
            if reached:
                shown = ", ".join(reached[:5]) + (f" and {len(reached) - 5} more" if len(reached) > 5 else "")
                out.append(
                    f"{function.where}: export-like function {function.name!r} is reachable on the relaxed "
                    f"channel {channel.name!r} from outside allowed_networks (for {shown}); "
                    f"add a block rule for function {function.name} on channel {channel.name}"
                )
    return out


def enrolled_users(policy: Policy) -> tuple[set[str], str | None]:
    """Users with a TOTP secret, and a problem reading the file if any."""
    path = policy.totp_secrets_file
    if path is None or not path.exists():
        return set(), None
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return set(), f"cannot read the TOTP secrets file {path}: {exc}"
    if data is None:
        return set(), None
    if not isinstance(data, dict):
        return set(), f"the TOTP secrets file {path} is not a mapping of users"
    return {
        canonical_user(str(user)) for user, entry in data.items() if isinstance(entry, dict) and entry.get("secret")
    }, None


def _twofa_where(policy: Policy, user: str, now: datetime) -> Where:
    spec = next((u for u in policy.spec.users if u.name == user), None)
    active: list[OverrideSpec] = []
    if spec is not None:
        active = [
            o
            for o in spec.overrides
            if o.require_2fa is not None
            and (o.expires is None or expiry_instant(o.expires, policy.office) > now)
        ]
    if active:
        return active[-1].where
    defaults = policy.spec.defaults
    return defaults.where_of("require_2fa") if defaults is not None else _first_where(policy)


def _two_factor(policy: Policy, now: datetime) -> list[str]:
    needing = [user for user in policy.users if policy.settings_for(user, now).require_2fa]
    anyone = policy.settings_for(None, now).require_2fa
    if not needing and not anyone:
        return []
    if not policy.totp_configured:
        where = _twofa_where(policy, needing[0], now) if needing else _first_where(policy)
        return [f"{where}: require_2fa is on but the main file has no totp section: nobody can give a second factor"]
    enrolled, problem = enrolled_users(policy)
    out = [f"{_first_where(policy)}: {problem}"] if problem else []
    for user in needing:
        if user not in enrolled:
            out.append(
                f"{_twofa_where(policy, user, now)}: require_2fa holds for {user!r}, who has no enrolled "
                f"TOTP secret (run `crm-gateway totp enroll {user}`)"
            )
    return out


def policy_warnings(policy: Policy, now: datetime) -> list[str]:
    return [*_lockout(policy, now), *_overrides(policy, now), *_relaxed(policy, now), *_two_factor(policy, now)]


# -- the overrides report ----------------------------------------------------------------------


def _rows(policy: Policy, now: datetime, review_days: int) -> dict[str, list[dict[str, Any]]]:
    sections: dict[str, list[dict[str, Any]]] = {
        "active": [],
        "expiring": [],
        "expired": [],
        "review": [],
        "undated": [],
    }
    review_before = (now - timedelta(days=review_days)).date()
    soon = now + timedelta(days=EXPIRING_DAYS)
    for user in policy.spec.users:
        for override in user.overrides:
            ends = expiry_instant(override.expires, policy.office) if override.expires is not None else None
            row: dict[str, Any] = {
                "id": override.id,
                "user": user.name,
                "keys": list(override.keys),
                "reason": override.reason,
                "granted": override.granted.isoformat() if override.granted else None,
                "by": override.by,
                "expires": override.expires.text if override.expires else None,
                "where": str(override.where),
            }
            if ends is not None and ends <= now:
                sections["expired"].append(row)
            else:
                sections["active"].append(row)
                if ends is not None and ends <= soon:
                    sections["expiring"].append(row)
            if override.granted is None:
                sections["undated"].append(row)
            elif override.granted < review_before:
                sections["review"].append(row)
    return sections


def overrides_json(policy: Policy, now: datetime, review_days: int) -> dict[str, object]:
    return {"now": now.isoformat(), "review_days": review_days, **_rows(policy, now, review_days)}


def overrides_text(policy: Policy, now: datetime, review_days: int) -> str:
    sections = _rows(policy, now, review_days)
    titles = {
        "active": "Active",
        "expiring": f"Expiring within {EXPIRING_DAYS} days",
        "expired": "Expired",
        "review": f"Granted more than {review_days} days ago (review them)",
        "undated": "No grant date (add `granted` and `by`)",
    }
    lines = [f"Per-user overrides at {now:%Y-%m-%d %H:%M %Z}"]
    for name, title in titles.items():
        rows = sections[name]
        lines.append("")
        lines.append(f"{title}: {len(rows)}")
        for row in rows:
            lines.append(
                f"  {row['user']:<12} {','.join(row['keys']):<28} granted {row['granted'] or '-'} "
                f"by {row['by'] or '-'}, expires {row['expires'] or 'never'}"
            )
            lines.append(f"  {'':<12} reason: {row['reason']}  ({row['id']}, {row['where']})")
    return "\n".join(lines)
