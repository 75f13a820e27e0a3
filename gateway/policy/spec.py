"""The policy files as typed, validated values, before compilation.

The loader (:mod:`gateway.policy.loader`) produces a :class:`PolicySpec`; the
compiler (:mod:`gateway.policy.rules`) turns it into rules with specificity
keys. Keeping the two apart lets the benchmark build big specs without YAML,
and keeps every ``file:line`` next to the value it explains, but a rule's line:
rules carry their file, and their lines are a column beside them.

Usernames are kept in their canonical form (:func:`canonical_user`): stripped
and case-folded. CRMs commonly accept ``Bob`` for ``bob`` at login; if the
policy compared names exactly, a user could dodge a rule written for them by
typing their name in another case.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from datetime import date, datetime

from gateway.policy.model import LoginHours
from gateway.policy.networks import NetEntry
from gateway.yamlsrc import Where

OVERRIDE_KEYS = ("ip_lockdown", "allowed_networks", "mobile_any_ip", "require_2fa", "login_hours")
MOBILE_CHANNEL = "mobile"  # the channel `mobile_any_ip` exempts
DEFAULT_CHANNEL = "web"  # every request no channel recognises


def canonical_user(name: str) -> str:
    """The form usernames are compared in: stripped, case-folded."""
    return name.strip().casefold()


@dataclass(frozen=True, slots=True)
class Expiry:
    """An ``expires`` value: a date (active through that whole day) or an instant."""

    value: date | datetime
    text: str


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    name: str
    user_agents: tuple[str, ...]  # regexes, searched case-insensitively
    paths: tuple[str, ...]  # path patterns; empty = any path
    where: Where


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    name: str
    paths: tuple[str, ...]
    methods: frozenset[str]  # empty = any method
    public: bool
    export_like: bool | None  # None = guess from the name and paths (for `check`)
    where: Where


@dataclass(frozen=True, slots=True)
class DefaultsSpec:
    ip_lockdown: bool
    allowed_networks: tuple[NetEntry, ...]
    mobile_any_ip: bool
    require_2fa: bool
    login_hours: LoginHours | None
    where: Where  # the `defaults:` key
    key_where: tuple[tuple[str, Where], ...]  # where each key was set

    def where_of(self, key: str) -> Where:
        return dict(self.key_where).get(key, self.where)


@dataclass(frozen=True, slots=True)
class OverrideSpec:
    user: str
    index: int
    ip_lockdown: bool | None
    allowed_networks: tuple[NetEntry, ...] | None
    mobile_any_ip: bool | None
    require_2fa: bool | None
    login_hours: LoginHours | None
    reason: str
    expires: Expiry | None
    granted: date | None
    by: str | None
    where: Where

    @property
    def id(self) -> str:
        return f"users.{self.user}.overrides[{self.index}]"

    @property
    def keys(self) -> tuple[str, ...]:
        """The settings this override changes, in the contract's order."""
        return tuple(key for key in OVERRIDE_KEYS if getattr(self, key) is not None)


@dataclass(frozen=True, slots=True)
class UserSpec:
    name: str
    timezone: str | None
    overrides: tuple[OverrideSpec, ...]
    where: Where


@dataclass(frozen=True, slots=True)
class GroupSpec:
    name: str
    members: tuple[str, ...]
    where: Where


@dataclass(frozen=True, slots=True)
class RuleSpec:
    id: str
    title: str
    action: str  # allow | block
    function: str | None  # None = '*'
    networks: tuple[NetEntry, ...] | None  # None = '*' or absent
    countries: frozenset[str] | None
    countries_negated: bool
    channel: str | None  # None = '*' or absent
    users: frozenset[str] | None
    groups: frozenset[str] | None
    priority: int
    report_only: bool
    expires: Expiry | None
    reason: str | None  # the admin's note on why the rule exists (never shown to clients)
    file: str  # the file it is written in; its line is kept apart, beside the rules (``rule_lines``),
    # so an edit that moves a rule to another line keeps its spec (and its compiled rule) as it is


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """Everything the policy files say, merged across files, in file order."""

    channels: tuple[ChannelSpec, ...] = ()
    functions: tuple[FunctionSpec, ...] = ()
    defaults: DefaultsSpec | None = None
    groups: tuple[GroupSpec, ...] = ()
    users: tuple[UserSpec, ...] = ()
    rules: tuple[RuleSpec, ...] = ()
    rule_lines: array[int] = field(default_factory=lambda: array("I"))  # the line each rule starts at

    def __post_init__(self) -> None:
        if len(self.rule_lines) != len(self.rules):
            raise ValueError(f"{len(self.rules)} rules but {len(self.rule_lines)} rule lines")
