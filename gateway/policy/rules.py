"""Compile the spec into rules with specificity keys (DESIGN.md §3.3) and per-user settings.

A compiled :class:`Rule` knows everything about itself that does not depend on
the request: its key is ``(priority, function, subject, network, country,
channel, block)`` where only ``network`` (the prefix length of the entry that
matched) is filled in at match time. See :class:`gateway.policy.model.TraceEntry`
for what each component counts.

``defaults`` and per-user overrides become ordinary rules, visible in
``explain``:

* ``defaults.ip_lockdown``: ``block *`` for everyone (reason ``ip_not_allowed``);
  ``defaults.allowed_networks``: ``allow *`` from those networks;
  ``defaults.mobile_any_ip``: ``allow *`` on channel ``mobile``.
* Each override compiles on its own, against the defaults, into ``users`` rules
  named ``users.<user>.overrides[<i>]`` (suffixed ``.<key>`` when one override
  yields several) whose title is the override's reason and whose expiry is the
  override's:

  - ``ip_lockdown: false``: ``allow *`` (the user's exemption; any
    ``allowed_networks``/``mobile_any_ip`` in the same override are moot);
  - ``ip_lockdown: true`` (a user stricter than the defaults): ``block *``,
    ``allow *`` from the defaults' ``allowed_networks`` plus the override's, and
    ``allow *`` on ``mobile`` when the effective ``mobile_any_ip`` holds;
  - ``allowed_networks`` alone: ``allow *`` from those networks (they add to the
    defaults' list);
  - ``mobile_any_ip: false`` under a defaults lock-down: ``block *`` on
    ``mobile`` plus ``allow *`` from the allowed networks, so the app works only
    where a browser would; ``mobile_any_ip: true`` under a lock-down whose
    defaults do not exempt mobile: ``allow *`` on ``mobile``. Without a
    lock-down these change nothing and compile to nothing.

  Because user rules outrank everyone rules only within the same function
  (§3.3 compares the function first), a named-function rule such as the
  clock-in ban still applies to an exempt user.
* ``require_2fa`` and ``login_hours`` overrides produce no rules: they shape
  :class:`EffectiveSettings`, which the engine and the 2FA filter read.

Expiry: a date means "through the end of that day" in the office's zone (the
zone of ``defaults.login_hours``, else UTC); a date-time without an offset is
read in that zone too.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.policy.model import EffectiveSettings, LoginHours
from gateway.policy.networks import NetEntry, v6_prefix
from gateway.policy.spec import (
    MOBILE_CHANNEL,
    DefaultsSpec,
    Expiry,
    OverrideSpec,
    PolicySpec,
    RuleSpec,
    UserSpec,
)
from gateway.schema import IPNetwork
from gateway.yamlsrc import Where

NO_NETWORK = -1  # the network component of a rule that names no network
Key = tuple[int, ...]  # a specificity key (see Rule.key)

SUBJECT_USERS, SUBJECT_GROUPS, SUBJECT_EVERYONE = 2, 1, 0
_NETWORKS = 130  # network component values: -1 (none) .. 128
_ORDER_BITS = 32
_ORDER_SPAN = 1 << _ORDER_BITS  # rules per policy, at most


def rank_network(rank: int) -> int:
    """The network component of a :meth:`Rule.rank`."""
    return (rank >> (_ORDER_BITS + 3)) % _NETWORKS - 1


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. ``order`` is its place in the files (defaults first)."""

    id: str
    title: str
    action: str  # allow | block
    function: str | None  # None = '*'
    networks: tuple[NetEntry, ...] | None
    countries: frozenset[str] | None
    countries_negated: bool
    channel: str | None
    users: frozenset[str] | None
    groups: frozenset[str] | None
    priority: int
    report_only: bool
    expires_at: datetime | None  # exclusive: the rule is ignored from this instant on
    expires_text: str | None
    note: str | None  # the admin's reason for the rule
    deny_reason: str  # DESIGN.md §5 code when this rule blocks
    where: Where
    order: int
    block: bool = field(init=False)
    subject: int = field(init=False)
    also_groups: frozenset[str] | None = field(init=False)  # groups to check for a users rule

    def __post_init__(self) -> None:
        object.__setattr__(self, "block", self.action == "block")
        subject = SUBJECT_USERS if self.users else SUBJECT_GROUPS if self.groups else SUBJECT_EVERYONE
        object.__setattr__(self, "subject", subject)
        object.__setattr__(self, "also_groups", self.groups if self.users else None)

    def key(self, network: int) -> Key:
        """The specificity key when the matched network entry has this prefix (or NO_NETWORK).

        An eighth component, ``-order``, makes exact ties deterministic (the rule
        written first decides); it is not shown as specificity.
        """
        return (
            self.priority,
            1 if self.function is not None else 0,
            self.subject,
            network,
            1 if self.countries is not None else 0,
            1 if self.channel is not None else 0,
            1 if self.block else 0,
            -self.order,
        )

    def rank(self, network: int) -> int:
        """:meth:`key` packed into one integer that sorts the same way (what the index stores).

        Mixed radix, most significant first: each component is shifted into the
        range of its radix, so comparing ranks compares keys lexicographically,
        at a fraction of a tuple's memory and comparison time. :func:`rank_network`
        unpacks the network component.
        """
        rank = ((self.priority * 2 + (self.function is not None)) * 3 + self.subject) * _NETWORKS + network + 1
        rank = ((rank * 2 + (self.countries is not None)) * 2 + (self.channel is not None)) * 2 + self.block
        return (rank << _ORDER_BITS) | (_ORDER_SPAN - 1 - self.order)

    def best_key(self) -> Key:
        """The highest key this rule can reach (its longest network entry)."""
        if self.networks is None:
            return self.key(NO_NETWORK)
        return self.key(max(v6_prefix(block) for entry in self.networks for block in entry.blocks))

    def active(self, at: datetime) -> bool:
        return self.expires_at is None or at < self.expires_at

    def describe(self) -> str:
        """The rule's conditions in the admin's words, e.g. ``function clock-in, groups warehouse``."""
        parts = [f"function {self.function or '*'}"]
        if self.users:
            parts.append("users " + ", ".join(sorted(self.users)))
        if self.groups:
            parts.append("groups " + ", ".join(sorted(self.groups)))
        if self.networks is not None:
            parts.append("networks " + ", ".join(entry.text for entry in self.networks))
        if self.countries is not None:
            sign = "!" if self.countries_negated else ""
            parts.append("countries " + ", ".join(sign + code for code in sorted(self.countries)))
        if self.channel is not None:
            parts.append(f"channel {self.channel}")
        if self.priority:
            parts.append(f"priority {self.priority}")
        if self.expires_text:
            parts.append(f"expires {self.expires_text}")
        return ", ".join(parts)


def expiry_instant(expiry: Expiry, office: ZoneInfo) -> datetime:
    """When an ``expires`` value stops holding (exclusive)."""
    value = expiry.value
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=office)
    try:
        return datetime.combine(value + timedelta(days=1), time(), tzinfo=office)
    except OverflowError:  # 9999-12-31: "never", as far as datetimes go
        return datetime.max.replace(tzinfo=UTC)


def office_zone_name(defaults: DefaultsSpec | None) -> str:
    if defaults is not None and defaults.login_hours is not None and defaults.login_hours.timezone:
        return defaults.login_hours.timezone
    return "UTC"


def deny_reason_of(spec: RuleSpec) -> str:
    """DESIGN.md §5: function, else user/group, else country, else address."""
    if spec.function is not None:
        return "function_blocked"
    if spec.users or spec.groups:
        return "user_blocked"
    if spec.countries is not None:
        return "country_not_allowed"
    return "ip_not_allowed"


class _Builder:
    def __init__(self, office: ZoneInfo) -> None:
        self.office = office
        self.rules: list[Rule] = []

    def add(
        self,
        *,
        id: str,
        title: str,
        action: str,
        where: Where,
        function: str | None = None,
        networks: tuple[NetEntry, ...] | None = None,
        countries: frozenset[str] | None = None,
        countries_negated: bool = False,
        channel: str | None = None,
        users: frozenset[str] | None = None,
        groups: frozenset[str] | None = None,
        priority: int = 0,
        report_only: bool = False,
        expires: Expiry | None = None,
        note: str | None = None,
        deny_reason: str = "ip_not_allowed",
    ) -> None:
        self.rules.append(
            Rule(
                id=id,
                title=title,
                action=action,
                function=function,
                networks=networks,
                countries=countries,
                countries_negated=countries_negated,
                channel=channel,
                users=users,
                groups=groups,
                priority=priority,
                report_only=report_only,
                expires_at=expiry_instant(expires, self.office) if expires is not None else None,
                expires_text=expires.text if expires is not None else None,
                note=note,
                deny_reason=deny_reason,
                where=where,
                order=len(self.rules),
            )
        )


def compile_rules(spec: PolicySpec) -> list[Rule]:
    """Defaults, then every user's overrides, then the files' rules, in that order."""
    office = ZoneInfo(office_zone_name(spec.defaults))
    builder = _Builder(office)
    defaults = spec.defaults
    if defaults is not None and defaults.ip_lockdown:
        builder.add(
            id="defaults.ip_lockdown",
            title="Lock-down: the CRM is closed outside allowed_networks",
            action="block",
            where=defaults.where_of("ip_lockdown"),
        )
        if defaults.allowed_networks:
            builder.add(
                id="defaults.allowed_networks",
                title="Lock-down: allowed_networks may use the CRM",
                action="allow",
                networks=defaults.allowed_networks,
                where=defaults.where_of("allowed_networks"),
            )
        if defaults.mobile_any_ip:
            builder.add(
                id="defaults.mobile_any_ip",
                title="Lock-down: the mobile app may connect from any IP",
                action="allow",
                channel=MOBILE_CHANNEL,
                where=defaults.where_of("mobile_any_ip"),
            )
    for user in spec.users:
        for override in user.overrides:
            _compile_override(builder, override, defaults)
    for rule in spec.rules:
        builder.add(
            id=rule.id,
            title=rule.title,
            action=rule.action,
            where=rule.where,
            function=rule.function,
            networks=rule.networks,
            countries=rule.countries,
            countries_negated=rule.countries_negated,
            channel=rule.channel,
            users=rule.users,
            groups=rule.groups,
            priority=rule.priority,
            report_only=rule.report_only,
            expires=rule.expires,
            note=rule.reason,
            deny_reason=deny_reason_of(rule),
        )
    return builder.rules


def _compile_override(builder: _Builder, override: OverrideSpec, defaults: DefaultsSpec | None) -> None:
    lockdown = defaults.ip_lockdown if defaults is not None else False
    default_nets = defaults.allowed_networks if defaults is not None else ()
    default_mobile = defaults.mobile_any_ip if defaults is not None else False
    own_nets = override.allowed_networks or ()
    wanted: list[tuple[str, str, tuple[NetEntry, ...] | None, str | None]] = []  # key, action, nets, channel
    if override.ip_lockdown is False:
        wanted.append(("ip_lockdown", "allow", None, None))
    elif override.ip_lockdown is True:
        wanted.append(("ip_lockdown", "block", None, None))
        if default_nets or own_nets:
            wanted.append(("allowed_networks", "allow", default_nets + own_nets, None))
        mobile = override.mobile_any_ip if override.mobile_any_ip is not None else default_mobile
        if mobile:
            wanted.append(("mobile_any_ip", "allow", None, MOBILE_CHANNEL))
    else:
        nets = own_nets
        if override.mobile_any_ip is False and lockdown:
            wanted.append(("mobile_any_ip", "block", None, MOBILE_CHANNEL))
            nets = default_nets + own_nets
        elif override.mobile_any_ip is True and lockdown and not default_mobile:
            wanted.append(("mobile_any_ip", "allow", None, MOBILE_CHANNEL))
        if nets:
            wanted.append(("allowed_networks", "allow", nets, None))
    for key, action, nets_, channel in wanted:
        builder.add(
            id=override.id if len(wanted) == 1 else f"{override.id}.{key}",
            title=override.reason,
            action=action,
            where=override.where,
            networks=nets_,
            channel=channel,
            users=frozenset({override.user}),
            expires=override.expires,
            note=override.reason,
            deny_reason="ip_not_allowed",
        )


# -- effective settings ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SettingsSegment:
    """A user's effective settings while the same set of overrides is active."""

    settings: EffectiveSettings
    zone: ZoneInfo
    hours_source: str | None  # where the login hours come from: an override id or defaults.login_hours
    hours_title: str | None  # e.g. "Login hours mon-fri 07:00-19:00 in Europe/London"


class SettingsTimeline:
    """A user's effective settings over time: they change only when an override expires.

    ``expiries`` are the distinct expiry instants, ascending; segment ``k`` holds
    from the k-th expiry (or forever before the first) until the next, so a
    lookup is one bisect.
    """

    __slots__ = ("expiries", "segments")

    def __init__(self, expiries: list[datetime], segments: list[SettingsSegment]) -> None:
        self.expiries = expiries
        self.segments = segments

    def at(self, when: datetime) -> SettingsSegment:
        if not self.expiries:
            return self.segments[0]
        return self.segments[bisect_right(self.expiries, when)]


def _flat(entries: tuple[NetEntry, ...]) -> tuple[IPNetwork, ...]:
    return tuple(block for entry in entries for block in entry.blocks)


def effective_settings(
    defaults: DefaultsSpec | None, user: UserSpec | None, active: list[OverrideSpec]
) -> EffectiveSettings:
    """Defaults with the active overrides applied in order (later wins; networks add up).

    The zone used for login hours: the zone written in the login_hours that
    apply when it is the user's own override, else the user's ``timezone``, else
    the zone of the defaults' login hours, else UTC.
    """
    lockdown = defaults.ip_lockdown if defaults is not None else False
    networks = _flat(defaults.allowed_networks) if defaults is not None else ()
    mobile = defaults.mobile_any_ip if defaults is not None else False
    require_2fa = defaults.require_2fa if defaults is not None else False
    hours: LoginHours | None = defaults.login_hours if defaults is not None else None
    hours_zone = hours.timezone if hours is not None else None
    own_hours_zone: str | None = None
    for override in active:
        if override.ip_lockdown is not None:
            lockdown = override.ip_lockdown
        if override.allowed_networks is not None:
            networks = networks + tuple(n for n in _flat(override.allowed_networks) if n not in networks)
        if override.mobile_any_ip is not None:
            mobile = override.mobile_any_ip
        if override.require_2fa is not None:
            require_2fa = override.require_2fa
        if override.login_hours is not None:
            hours = override.login_hours
            own_hours_zone = override.login_hours.timezone
    zone = own_hours_zone or (user.timezone if user is not None else None) or hours_zone or "UTC"
    return EffectiveSettings(
        ip_lockdown=lockdown,
        allowed_networks=networks,
        mobile_any_ip=mobile,
        require_2fa=require_2fa,
        login_hours=hours,
        timezone=zone,
        overrides=tuple(override.reason for override in active),
    )


def settings_timeline(defaults: DefaultsSpec | None, user: UserSpec | None, office: ZoneInfo) -> SettingsTimeline:
    overrides = list(user.overrides) if user is not None else []
    expiry_of = {
        id(o): expiry_instant(o.expires, office) for o in overrides if o.expires is not None
    }
    expiries = sorted(set(expiry_of.values()))
    segments: list[SettingsSegment] = []
    for start in [None, *expiries]:
        active = [o for o in overrides if id(o) not in expiry_of or start is None or expiry_of[id(o)] > start]
        settings = effective_settings(defaults, user, active)
        source = next((f"{o.id}.login_hours" for o in reversed(active) if o.login_hours is not None), None)
        if source is None and settings.login_hours is not None:
            source = "defaults.login_hours"
        title = None
        if settings.login_hours is not None:
            title = f"Login hours {settings.login_hours.describe()} in {settings.timezone}"
        segments.append(SettingsSegment(settings, ZoneInfo(settings.timezone), source, title))
    return SettingsTimeline(expiries, segments)

