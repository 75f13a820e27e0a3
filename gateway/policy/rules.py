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

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
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
_ORDER_BITS = 64
_ORDER_SPAN = 1 << _ORDER_BITS  # order numbers (see Rule)


def rank_for_network(plain_rank: int, network: int) -> int:
    """``rule.rank(network)`` from ``rule.rank(NO_NETWORK)``: the network component is a plain offset."""
    return plain_rank + ((network - NO_NETWORK) << (_ORDER_BITS + 3))


# what rank_for_network adds for a network component of 0 .. 128 (the index adds it at match time)
NETWORK_OFFSETS = tuple((network - NO_NETWORK) << (_ORDER_BITS + 3) for network in range(129))


def rank_network(rank: int) -> int:
    """The network component of a :meth:`Rule.rank`."""
    return (rank >> (_ORDER_BITS + 3)) % _NETWORKS - 1


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule: its spec, plus what only compiling knows.

    ``order`` is its place in the files: defaults and overrides count from 0,
    the rules of the k-th file are numbered within ``[k << FILE_SHIFT, (k + 1)
    << FILE_SHIFT)``, with gaps (see :func:`_numbered`). Only the order matters
    (it breaks exact ties, see :meth:`key`), so numbering each file on its own,
    with gaps, keeps a file's rules the same objects across a reload that
    changed another file, or added or changed a few rules in this one (see
    :func:`compile_rules`). What the decision reads on every request is copied
    out of the spec into slots; the rest is read through it.
    The order is kept inside ``plain`` (:meth:`rank` with no network, which the
    index sorts by and the decision compares): one int per rule, no rank per
    network block.
    """

    spec: RuleSpec
    expires_at: datetime | None  # exclusive: the rule is ignored from this instant on
    deny_reason: str  # DESIGN.md §5 code when this rule blocks
    plain: int  # rank(NO_NETWORK); made by compiled()
    block: bool = field(init=False)
    channel: str | None = field(init=False)
    countries: frozenset[str] | None = field(init=False)
    countries_negated: bool = field(init=False)
    report_only: bool = field(init=False)
    also_groups: frozenset[str] | None = field(init=False)  # groups to check for a users rule

    def __post_init__(self) -> None:
        spec, set_ = self.spec, object.__setattr__
        set_(self, "block", spec.action == "block")
        set_(self, "channel", spec.channel)
        set_(self, "countries", spec.countries)
        set_(self, "countries_negated", spec.countries_negated)
        set_(self, "report_only", spec.report_only)
        set_(self, "also_groups", spec.groups if spec.users else None)

    @classmethod
    def compiled(cls, spec: RuleSpec, expires_at: datetime | None, deny_reason: str, order: int) -> Rule:
        """The rule that ``spec`` compiles to, ``order``-th in the files (see the class docstring)."""
        subject = SUBJECT_USERS if spec.users else SUBJECT_GROUPS if spec.groups else SUBJECT_EVERYONE
        rank = ((spec.priority * 2 + (spec.function is not None)) * 3 + subject) * _NETWORKS + NO_NETWORK + 1
        rank = ((rank * 2 + (spec.countries is not None)) * 2 + (spec.channel is not None)) * 2
        rank += spec.action == "block"
        if not 0 <= order < _ORDER_SPAN:
            raise ValueError(f"rule order out of range: {order}")
        return cls(spec, expires_at, deny_reason, (rank << _ORDER_BITS) | (_ORDER_SPAN - 1 - order))

    @property
    def order(self) -> int:
        return _ORDER_SPAN - 1 - (self.plain & (_ORDER_SPAN - 1))

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def action(self) -> str:
        return self.spec.action

    @property
    def function(self) -> str | None:
        return self.spec.function

    @property
    def networks(self) -> tuple[NetEntry, ...] | None:
        return self.spec.networks

    @property
    def users(self) -> frozenset[str] | None:
        return self.spec.users

    @property
    def groups(self) -> frozenset[str] | None:
        return self.spec.groups

    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def expires_text(self) -> str | None:
        return self.spec.expires.text if self.spec.expires is not None else None

    @property
    def note(self) -> str | None:
        """The admin's reason for the rule."""
        return self.spec.reason

    @property
    def subject(self) -> int:
        spec = self.spec
        return SUBJECT_USERS if spec.users else SUBJECT_GROUPS if spec.groups else SUBJECT_EVERYONE

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
        """:meth:`key` packed into one integer that sorts the same way (what the decision compares).

        Mixed radix, most significant first: each component is shifted into the
        range of its radix, so comparing ranks compares keys lexicographically,
        at a fraction of a tuple's memory and comparison time. :func:`rank_network`
        unpacks the network component; ``plain`` is the rank with no network and
        :data:`NETWORK_OFFSETS` what a network adds to it.
        """
        return rank_for_network(self.plain, network)

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


FILE_SHIFT = 44  # the rules of the k-th policy file (from 1) are numbered within [k, k + 1) << FILE_SHIFT
ORDER_GAP = 1 << 20  # and this far apart when numbered anew (room for an edit's new rules between them)
MIN_GAP = 1 << 10  # rules numbered anew to make room are at least this far apart (see _make_room)


class _Builder:
    def __init__(self, office: ZoneInfo) -> None:
        self.office = office
        self.rules: list[Rule] = []
        self.lines = array("I")  # where each rule is written

    def add(
        self,
        *,
        id: str,
        title: str,
        action: str,
        where: Where,
        function: str | None = None,
        networks: tuple[NetEntry, ...] | None = None,
        channel: str | None = None,
        users: frozenset[str] | None = None,
        expires: Expiry | None = None,
        note: str | None = None,
    ) -> None:
        """A rule the defaults or an override make (they name no countries, groups or priority)."""
        spec = RuleSpec(
            id=id, title=title, action=action, function=function, networks=networks, countries=None,
            countries_negated=False, channel=channel, users=users, groups=None, priority=0, report_only=False,
            expires=expires, reason=note, file=where.file,
        )  # fmt: skip
        self.rules.append(self.compiled(spec, "ip_not_allowed", len(self.rules)))
        self.lines.append(where.line)

    def compiled(self, spec: RuleSpec, deny_reason: str, order: int) -> Rule:
        expires_at = expiry_instant(spec.expires, self.office) if spec.expires is not None else None
        return Rule.compiled(spec, expires_at, deny_reason, order)

    def reusable(self, old: Rule | None, spec: RuleSpec) -> int | None:
        """``old``'s order if it is ``spec`` compiled with the same expiry instant (its file: see _numbered)."""
        if old is None or old.spec is not spec or (
            spec.expires is not None and old.expires_at != expiry_instant(spec.expires, self.office)
        ):
            return None
        return old.order

    def add_file(self, specs: tuple[RuleSpec, ...], file_base: int, reusable: dict[int, Rule]) -> None:
        """One policy file's rules: the previous ones reused in their places, the others numbered between them."""
        olds = [self.reusable(reusable.get(id(spec)), spec) for spec in specs]
        for spec, old, order in zip(specs, olds, _numbered(olds, file_base), strict=True):
            # a kept rule keeps its order unless it had to make room (see _numbered): then it is compiled anew
            rule = reusable[id(spec)] if old == order else self.compiled(spec, deny_reason_of(spec), order)
            self.rules.append(rule)


def _numbered(olds: list[int | None], file_base: int) -> list[int]:
    """Increasing orders in ``file_base``'s range, the given ones kept wherever there is room.

    The None ones (new rules) are spread evenly between their kept neighbours,
    :data:`ORDER_GAP` apart before the first kept one and after the last (a file
    numbered whole starts in the middle of its range), so rules added at the top
    or the end never run out of room. Kept orders that do not increase, or lie
    outside the file's range (the file moved in the list), are numbered anew
    too (as few as can be: rules moved up or down keep the others' orders), and
    so are the kept rules around a run of new ones that has no room left (see
    :func:`_make_room`).
    """
    end = file_base + (1 << FILE_SHIFT)
    kept: list[int | None] = [old if old is not None and file_base < old < end else None for old in olds]
    orders = [old for old in kept if old is not None]
    if any(a >= b for a, b in pairwise(orders)):  # some rules moved: keep the most that stay in order
        keep, at = _increasing(orders), 0
        for i, old in enumerate(kept):
            if old is not None:
                kept[i] = old if at in keep else None
                at += 1
    _make_room(kept, file_base, end)
    out: list[int] = []
    low, i, n = file_base, 0, len(kept)
    while i < n:
        old = kept[i]
        if old is not None:
            out.append(old)
            low, i = old, i + 1
            continue
        j = _run_end(kept, i)
        count, following = j - i, kept[j] if j < n else None
        if following is None:  # the last rules (ORDER_GAP apart), or all of them (from the range's middle)
            if i == 0:
                low = file_base + (1 << (FILE_SHIFT - 1))
            high = min(low + (count + 1) * ORDER_GAP, end)
        else:
            high = following
            if i == 0:  # the first rules: ORDER_GAP apart down from the first kept one (inserts at the top)
                low = max(file_base, high - (count + 1) * ORDER_GAP)
        step = (high - low) // (count + 1)
        out.extend(range(low + step, low + step * (count + 1), step))
        low, i = out[-1], j
    return out


def _increasing(orders: list[int]) -> set[int]:
    """The positions of a longest strictly increasing subsequence of ``orders`` (patience sorting)."""
    tails: list[int] = []  # tails[k]: the smallest last order of an increasing subsequence of length k + 1
    tail_at: list[int] = []  # ... and its position
    back = [-1] * len(orders)  # each position's predecessor in the subsequence it ends
    for at, order in enumerate(orders):
        k = bisect_left(tails, order)
        if k == len(tails):
            tails.append(order)
            tail_at.append(at)
        else:
            tails[k], tail_at[k] = order, at
        back[at] = tail_at[k - 1] if k else -1
    out: set[int] = set()
    at = tail_at[-1] if tail_at else -1
    while at >= 0:
        out.add(at)
        at = back[at]
    return out


def _make_room(kept: list[int | None], low_end: int, high_end: int) -> None:
    """Drop kept orders (make them None) until every run of None has room between its neighbours.

    Inserts at one place halve the room there each time. A run without room is
    widened, doubling, until the window's range gives each of its rules
    :data:`MIN_GAP`; the kept rules inside it are then numbered anew with it: a
    few rules compiled again, not the whole file.
    """
    n = len(kept)

    def bounds(a: int, b: int) -> tuple[int, int]:  # the kept orders (or the range's ends) around kept[a:b]
        before, after = kept[a - 1] if a else None, kept[b] if b < n else None
        return low_end if before is None else before, high_end if after is None else after

    i = 0
    while i < n:
        if kept[i] is not None:
            i += 1
            continue
        j = _run_end(kept, i)
        low, high = bounds(i, j)
        if high - low > j - i:  # room for j - i numbers strictly between
            i = j
            continue
        a, b, width = i, j, 1
        while True:
            a, b, width = max(0, a - width), _run_end(kept, min(n, b + width)), width * 2
            while a and kept[a - 1] is None:  # a neighbouring run joins the window whole
                a -= 1
            low, high = bounds(a, b)
            if high - low >= (b - a + 1) * MIN_GAP or (a == 0 and b == n):
                break
        if high - low <= b - a:
            raise ValueError("too many rules in one policy file to number")
        kept[a:b] = [None] * (b - a)
        i = a  # the widened run, looked at again


def _run_end(kept: list[int | None], i: int) -> int:
    """Where the run of None from ``i`` ends."""
    while i < len(kept) and kept[i] is None:
        i += 1
    return i


def compile_rules(spec: PolicySpec, previous: Iterable[Rule] = ()) -> tuple[list[Rule], array[int]]:
    """Defaults, then every user's overrides, then the files' rules, in that order; and the line of each.

    ``previous`` are the rules of the policy being replaced: a rule whose spec is
    the very same object (its file was not read again, or an edit of it left that
    rule alone), in the same file, whose office zone did not change, is reused as
    it is, order included, so a reload after editing a small file does not rebuild
    the 100,000 rules of a big one, and an edit of the big one rebuilds only the
    rules it changed.
    """
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
    if len(builder.rules) >= 1 << FILE_SHIFT:
        raise ValueError("too many overrides to number")
    reusable = {id(rule.spec): rule for rule in previous}
    rules, start, file_base = spec.rules, 0, 0
    while start < len(rules):
        end, file = start, rules[start].file
        while end < len(rules) and rules[end].file == file:
            end += 1
        file_base += 1 << FILE_SHIFT
        if file_base >= _ORDER_SPAN:
            raise ValueError("too many policy files to number")
        builder.add_file(rules[start:end], file_base, reusable)
        start = end
    return builder.rules, builder.lines + spec.rule_lines


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

