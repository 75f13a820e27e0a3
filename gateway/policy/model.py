"""The frozen values that cross the policy engine's boundary.

Facts about a request go in (:class:`RequestFacts`), a :class:`Decision` comes
out. Nothing here knows about HTTP or aiohttp: the gateway's filters build the
facts, and the CLI's ``explain`` builds them from its arguments, so both are
judged by exactly the same code.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, time
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.schema import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the gateway knows about one request when it asks for a decision."""

    client_ip: IPAddress  # already resolved (§3.1); IPv4-mapped already mapped
    method: str  # upper case
    path: str  # the *match* form of the normalised path (§3.2)
    user_agent: str
    user: str | None  # None = anonymous (no identity yet)
    at: datetime  # timezone-aware: login hours and expiries are judged at this instant

    def __post_init__(self) -> None:
        # A naive time would be read in the host's zone: a silent, machine-dependent
        # shift of every login window. Refuse it where the bug is made.
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise ValueError("RequestFacts.at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class LoginHours:
    """A weekly window of wall-clock times, e.g. mon-fri 07:00-19:00.

    ``timezone`` is the zone written in the config next to the window (None when
    the window takes the user's or the office's zone); the zone actually used is
    passed to :meth:`contains` by whoever resolved it.
    """

    timezone: str | None
    days: frozenset[int]  # 0 = Monday ... 6 = Sunday
    start: time  # inclusive
    end: time  # exclusive; end < start means the window passes midnight

    def contains(self, at: datetime, tz: ZoneInfo) -> bool:
        """Is ``at`` inside the window, read on the wall clock of ``tz``?

        Comparing local wall-clock times makes DST changes come out right: on the
        day the clocks go forward, 07:00-19:00 is still 07:00-19:00 local. A
        window that passes midnight belongs to the day it starts on: with
        ``fri 22:00-06:00``, Saturday 03:00 is inside and Friday 03:00 is not.
        """
        local = at.astimezone(tz)
        now = local.time()
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start <= now < self.end
        if now >= self.start:
            return weekday in self.days
        if now < self.end:
            return (weekday - 1) % 7 in self.days
        return False

    def describe(self) -> str:
        """Admin-facing text, e.g. ``mon-fri 07:00-19:00``.

        The zone is left out on purpose: the zone a window is read in depends on
        the user (:attr:`EffectiveSettings.timezone`), not only on this value.
        """
        return f"{describe_days(self.days)} {self.start:%H:%M}-{self.end:%H:%M}"


def describe_days(days: frozenset[int]) -> str:
    """``{0,1,2,3,4}`` -> ``mon-fri``; irregular sets are listed: ``mon,wed,sat``."""
    if len(days) == 7:
        return "mon-sun"
    ordered = sorted(days)
    if not ordered:
        return "never"
    # a contiguous run, possibly wrapping the week (sat-mon)
    for first in ordered:
        run = [(first + i) % 7 for i in range(len(ordered))]
        if set(run) == days:
            return DAY_NAMES[run[0]] if len(run) == 1 else f"{DAY_NAMES[run[0]]}-{DAY_NAMES[run[-1]]}"
    return ",".join(DAY_NAMES[d] for d in ordered)


@dataclass(frozen=True, slots=True)
class EffectiveSettings:
    """A user's settings after their active overrides (§3.4), else the defaults."""

    ip_lockdown: bool
    allowed_networks: tuple[IPNetwork, ...]
    mobile_any_ip: bool
    require_2fa: bool
    login_hours: LoginHours | None
    timezone: str  # the zone login hours are read in for this user
    overrides: tuple[str, ...]  # reasons of the active overrides that shaped this


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One line of ``explain``: a rule, its specificity and whether it matched.

    ``specificity`` is the rule's sort key (DESIGN.md §3.3), highest wins:
    ``(priority, function, subject, network, country, channel, block)`` where
    function is 1 for a named function and 0 for ``*``; subject 2 users, 1
    groups, 0 everyone; network the matched entry's prefix length in IPv6 terms
    (IPv4 /p = 96+p) or -1 when the rule names no network; country 1 when the
    rule names countries; channel 1 for a named channel; block 1 for ``block``.
    """

    rule_id: str
    title: str
    action: str
    specificity: tuple[int, ...]
    matched: bool
    deciding: bool
    why: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one request, and what it was based on."""

    action: Literal["allow", "deny"]
    enforced: bool  # False when the deny is report-only (mode or rule): forward it, log would_deny
    reason: str | None  # a DESIGN.md §5 code; None when allowed
    rule_id: str | None
    rule_title: str | None
    channel: str
    functions: tuple[str, ...]
    public: bool  # every function of the request is public
    country: str | None  # None without geoip or for an address the database does not know
    settings: EffectiveSettings  # for facts.user (the defaults when anonymous or unknown)
    trace: tuple[TraceEntry, ...]  # only with explain=True

    @property
    def allowed(self) -> bool:
        """Should the request be forwarded?"""
        return self.action == "allow" or not self.enforced
