"""Read and validate the policy files (DESIGN.md §2) into a :class:`PolicySpec`.

Every problem is recorded as ``file:line: message`` and reading goes on, so one
``check`` run lists all of them. Names are checked across files once all files
are read: a name defined twice is reported at its second place, naming the
first; a reference to a function, channel, group or user that does not exist is
reported where it is made.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterable
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.policy.agents import compile_agent
from gateway.policy.model import DAY_NAMES, LoginHours
from gateway.policy.networks import NetEntry, parse_entry
from gateway.policy.patterns import PatternError, check_pattern
from gateway.policy.spec import (
    DEFAULT_CHANNEL,
    MOBILE_CHANNEL,
    OVERRIDE_KEYS,
    ChannelSpec,
    DefaultsSpec,
    Expiry,
    FunctionSpec,
    GroupSpec,
    OverrideSpec,
    PolicySpec,
    RuleSpec,
    UserSpec,
    canonical_user,
)
from gateway.schema import Section
from gateway.yamlsrc import ConfigError, Mapping, Problems, Sequence, Where, load_yaml

FILE_KEYS = ("channels", "functions", "defaults", "groups", "users", "rules")
CHANNEL_KEYS = ("user_agents", "paths")
FUNCTION_KEYS = ("paths", "methods", "public", "export_like")
DEFAULTS_KEYS = ("ip_lockdown", "allowed_networks", "mobile_any_ip", "require_2fa", "login_hours")
LOGIN_HOURS_KEYS = ("timezone", "days", "from", "to")
USER_KEYS = ("timezone", "overrides")
OVERRIDE_FIELDS = (*OVERRIDE_KEYS, "reason", "expires", "granted", "by")
RULE_KEYS = (
    "id", "title", "action", "function", "networks", "countries", "channel",
    "users", "groups", "priority", "report_only", "expires", "reason",
)  # fmt: skip

_COUNTRY = re.compile(r"^(!?)([A-Za-z]{2})$")
_TIME = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")
_METHOD = re.compile(r"^[A-Z]+$")
_FULL_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def parse_days(value: Any) -> frozenset[int]:
    """``mon-fri``, ``mon,wed,sat``, ``sat-mon`` (wraps the week), or a list of those."""
    items = value if isinstance(value, list) else [value]
    days: set[int] = set()
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"expected days like mon-fri or mon,wed,sat, got {item!r}")
        for part in item.split(","):
            first, dash, last = part.strip().partition("-")
            start = _day(first)
            end = _day(last) if dash else start
            day = start
            days.add(day)
            while day != end:
                day = (day + 1) % 7
                days.add(day)
    return frozenset(days)


def _day(text: str) -> int:
    name = text.strip().lower()
    if name in DAY_NAMES:
        return DAY_NAMES.index(name)
    if name in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(name)
    raise ValueError(f"unknown day {text.strip()!r} (expected mon, tue, wed, thu, fri, sat or sun)")


def parse_time(value: Any) -> time:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 19:00 as the base-60 number 1140
        raise ValueError(f"write times in quotes, like '19:00' (YAML read this one as the number {value})")
    if not isinstance(value, str):
        raise ValueError(f"expected a time like '07:00', got {value!r}")
    match = _TIME.match(value.strip())
    if not match:
        raise ValueError(f"expected a time like '07:00' (HH:MM, 00:00-23:59), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


def parse_expiry(value: Any) -> Expiry:
    """A YAML date (``2026-12-31``), date-time, or the same as a string."""
    if isinstance(value, datetime | date):
        return Expiry(value, value.isoformat())
    if isinstance(value, str):
        text = value.strip()
        for parser in (date.fromisoformat, datetime.fromisoformat):
            try:
                return Expiry(parser(text), text)
            except ValueError:
                continue
    raise ValueError(f"expected a date like 2026-12-31 or a date-time, got {value!r}")


def parse_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected a date like 2026-11-02, got {value!r}")


class _Reader:
    """Accumulates the spec across files and remembers names and references."""

    def __init__(self, problems: Problems, *, geoip: bool) -> None:
        self.problems = problems
        self.geoip = geoip
        self.channels: list[ChannelSpec] = []
        self.functions: list[FunctionSpec] = []
        self.defaults: DefaultsSpec | None = None
        self.groups: list[GroupSpec] = []
        self.users: list[UserSpec] = []
        self.rules: list[RuleSpec] = []
        self.rule_lines = array("I")  # the line of each of `rules`
        self.defined: dict[str, dict[str, Where]] = {
            kind: {} for kind in ("channel", "function", "group", "user", "rule id")
        }
        self.group_members: set[str] = set()
        self.refs: list[tuple[str, str, Where]] = []  # (kind, name, where used)
        self.mobile_refs: list[Where] = []  # places that rely on the `mobile` channel existing
        self.shared_sets: dict[frozenset[str], frozenset[str]] = {}
        self.item_refs: array[int] | None = None  # when set: len(refs) as each `rules` item is read

    # -- helpers -------------------------------------------------------------------------------
    def add(self, where: Where, message: str) -> None:
        self.problems.add(where, message)

    def define(self, kind: str, name: str, where: Where) -> bool:
        """Record a definition; a second one is a problem naming both places."""
        first = self.defined[kind].get(name)
        if first is not None:
            self.add(where, f"{kind} {name!r} is defined twice: here and at {first}")
            return False
        self.defined[kind][name] = where
        return True

    def mapping_items(self, value: Any, where: Where, label: str) -> Iterable[tuple[str, Any, Where]]:
        if value is None:
            return []
        if not isinstance(value, dict):
            self.add(where, f"{label}: expected a mapping of names, got {_kind(value)}")
            return []
        return [
            (str(name), item, value.where(name) if isinstance(value, Mapping) else where)
            for name, item in value.items()
        ]

    def name_ok(self, name: str, where: Where, kind: str) -> bool:
        if not name.strip() or name.strip() != name:
            self.add(where, f"{kind} name {name!r}: must be non-empty, without surrounding spaces")
            return False
        if name == "*":
            self.add(where, f"{kind} name '*' is reserved (it means any {kind})")
            return False
        return True

    def networks(self, section: Section, key: str, *, star: bool) -> tuple[NetEntry, ...] | None:
        """A networks list; None when absent or (if ``star``) ``'*'``."""
        if not section.has(key):
            return None
        items = section.list(key)
        if star and any(item == "*" for item, _ in items):
            if len(items) > 1:
                self.add(section.where(key), f"{key}: '*' means any address; it cannot be mixed with others")
            return None
        if not items:
            if not star:  # allowed_networks: [] is a plain "none"
                return ()
            self.add(section.where(key), f"{key}: empty list (omit the key to mean any address)")
            return None
        out: list[NetEntry] = []
        for item, where in items:
            try:
                out.append(parse_entry(item))
            except ValueError as exc:
                self.add(where, f"{key}: {exc}")
        return tuple(out)

    def login_hours(self, section: Section, key: str, label: str) -> LoginHours | None:
        if not section.has(key):
            return None
        hours = section.section(key, allowed=LOGIN_HOURS_KEYS)
        if not isinstance(section.data.get(key), dict):
            return None
        ok = True
        timezone = hours.str("timezone", None)
        if timezone is not None and not valid_timezone(timezone):
            self.add(hours.where("timezone"), f"{label}.timezone: unknown timezone {timezone!r}")
            ok = False
        days = frozenset(range(7))
        if hours.has("days"):
            try:
                days = parse_days(hours.raw("days"))
            except ValueError as exc:
                self.add(hours.where("days"), f"{label}.days: {exc}")
                ok = False
        times: list[time] = []
        for field in ("from", "to"):
            if not hours.has(field):
                self.add(hours.where(), f"{label}: '{field}' is required")
                ok = False
                continue
            try:
                times.append(parse_time(hours.raw(field)))
            except ValueError as exc:
                self.add(hours.where(field), f"{label}.{field}: {exc}")
                ok = False
        if len(times) == 2 and times[0] == times[1]:
            self.add(
                hours.where("to"),
                f"{label}: 'from' and 'to' are both {times[0]:%H:%M}; "
                "write a real window (it may pass midnight, like '22:00' to '06:00')",
            )
            ok = False
        if not ok or len(times) != 2:
            return None
        return LoginHours(timezone=timezone, days=days, start=times[0], end=times[1])

    def expiry(self, section: Section, key: str, label: str) -> Expiry | None:
        if not section.has(key):
            return None
        try:
            return parse_expiry(section.raw(key))
        except ValueError as exc:
            self.add(section.where(key), f"{label}.{key}: {exc}")
            return None

    # -- one file ------------------------------------------------------------------------------
    def read_file(self, data: Any, path: Path) -> None:
        name = str(path)
        if data is None:
            return
        if not isinstance(data, dict):
            self.add(
                Where(name, 1),
                f"expected a mapping of sections ({', '.join(FILE_KEYS)}) at the top of the file, got {_kind(data)}",
            )
            return
        top = Section(data, self.problems, name="", allowed=FILE_KEYS, where=Where(name, 1))
        if not top.data:
            return
        self.read_channels(top)
        self.read_functions(top)
        self.read_defaults(top)
        self.read_groups(top)
        self.read_users(top)
        self.read_rules(top, path.stem)

    def read_channels(self, top: Section) -> None:
        for name, value, where in self.mapping_items(top.raw("channels"), top.where("channels"), "channels"):
            if not self.name_ok(name, where, "channel"):
                continue
            if name == DEFAULT_CHANNEL:
                self.add(where, f"channel name {name!r} is reserved: it is the channel of every other request")
                continue
            section = Section(value, self.problems, name=f"channels.{name}", allowed=CHANNEL_KEYS, where=where)
            agents: list[str] = []
            for item, item_where in section.list("user_agents"):
                if not isinstance(item, str):
                    self.add(item_where, f"channels.{name}.user_agents: expected a regex string, got {_kind(item)}")
                    continue
                try:
                    compile_agent(item)
                except ValueError as exc:
                    self.add(item_where, f"channels.{name}.user_agents: bad regex {item!r}: {exc}")
                    continue
                agents.append(item)
            paths = self.patterns(section, f"channels.{name}")
            if not section.has("user_agents") and not section.has("paths"):
                self.add(where, f"channels.{name}: needs user_agents or paths (or both)")
            if self.define("channel", name, where):
                self.channels.append(ChannelSpec(name, tuple(agents), tuple(paths), where))

    def patterns(self, section: Section, label: str) -> list[str]:
        out: list[str] = []
        for item, item_where in section.list("paths"):
            if not isinstance(item, str):
                self.add(item_where, f"{label}.paths: expected a path pattern, got {_kind(item)}")
                continue
            try:
                check_pattern(item)
            except (PatternError, re.error) as exc:
                self.add(item_where, f"{label}.paths: {exc}")
                continue
            out.append(item)
        return out

    def read_functions(self, top: Section) -> None:
        for name, value, where in self.mapping_items(
            top.raw("functions"), top.where("functions"), "functions"
        ):
            if not self.name_ok(name, where, "function"):
                continue
            label = f"functions.{name}"
            section = Section(value, self.problems, name=label, allowed=FUNCTION_KEYS, where=where)
            paths = self.patterns(section, label)
            if not section.has("paths"):
                self.add(where, f"{label}: 'paths' is required")
            methods: set[str] = set()
            for item, item_where in section.list("methods"):
                method = item.strip().upper() if isinstance(item, str) else ""
                if not _METHOD.match(method):
                    self.add(item_where, f"{label}.methods: expected an HTTP method like POST, got {item!r}")
                    continue
                methods.add(method)
            public = section.bool("public", False)
            export_like = section.bool("export_like", False) if section.has("export_like") else None
            if self.define("function", name, where):
                self.functions.append(FunctionSpec(name, tuple(paths), frozenset(methods), public, export_like, where))

    def read_defaults(self, top: Section) -> None:
        if not top.has("defaults"):
            return
        where = top.where("defaults")
        if self.defaults is not None:
            self.add(where, f"defaults are defined twice: here and at {self.defaults.where}")
            return
        section = top.section("defaults", allowed=DEFAULTS_KEYS)
        nets = self.networks(section, "allowed_networks", star=False) or ()
        mobile = section.bool("mobile_any_ip", False)
        if mobile:
            self.mobile_refs.append(section.where("mobile_any_ip"))
        key_where = tuple((key, section.where(key)) for key in DEFAULTS_KEYS if key in section.data)
        self.defaults = DefaultsSpec(
            ip_lockdown=section.bool("ip_lockdown", False),
            allowed_networks=nets,
            mobile_any_ip=mobile,
            require_2fa=section.bool("require_2fa", False),
            login_hours=self.login_hours(section, "login_hours", "defaults.login_hours"),
            where=where,
            key_where=key_where,
        )

    def read_groups(self, top: Section) -> None:
        for name, value, where in self.mapping_items(top.raw("groups"), top.where("groups"), "groups"):
            if not self.name_ok(name, where, "group"):
                continue
            members: list[str] = []
            items: list[tuple[Any, Where]]
            if value is None:
                items = []
            elif isinstance(value, Sequence):
                items = list(value.items_with_where())
            elif isinstance(value, list):
                items = [(item, where) for item in value]
            else:
                self.add(where, f"groups.{name}: expected a list of usernames, got {_kind(value)}")
                continue
            for item, item_where in items:
                if not isinstance(item, str | int) or isinstance(item, bool) or not str(item).strip():
                    self.add(item_where, f"groups.{name}: expected a username, got {_kind(item)}")
                    continue
                member = canonical_user(str(item))
                if member not in members:
                    members.append(member)
            if self.define("group", name, where):
                self.groups.append(GroupSpec(name, tuple(members), where))
                self.group_members.update(members)

    def read_users(self, top: Section) -> None:
        for raw_name, value, where in self.mapping_items(top.raw("users"), top.where("users"), "users"):
            if not self.name_ok(raw_name, where, "user"):
                continue
            name = canonical_user(raw_name)
            label = f"users.{raw_name}"
            section = Section(value, self.problems, name=label, allowed=USER_KEYS, where=where)
            timezone = section.str("timezone", None)
            if timezone is not None and not valid_timezone(timezone):
                self.add(section.where("timezone"), f"{label}.timezone: unknown timezone {timezone!r}")
                timezone = None
            overrides: list[OverrideSpec] = []
            for index, (item, item_where) in enumerate(section.list("overrides")):
                override = self.read_override(name, index, item, item_where, f"{label}.overrides[{index}]")
                if override is not None:
                    overrides.append(override)
            if self.define("user", name, where):
                self.users.append(UserSpec(name, timezone, tuple(overrides), where))

    def read_override(self, user: str, index: int, item: Any, where: Where, label: str) -> OverrideSpec | None:
        if isinstance(item, Mapping):
            where = item.where()
        section = Section(item, self.problems, name=label, allowed=OVERRIDE_FIELDS, where=where)
        if not isinstance(item, dict):
            return None
        reason = section.str("reason", "")
        if not reason.strip():
            self.add(where, f"{label}: 'reason' is required (why this user is an exception)")
        if not any(key in section.data for key in OVERRIDE_KEYS):
            self.add(where, f"{label}: changes nothing (set one of: {', '.join(OVERRIDE_KEYS)})")
        mobile = section.bool("mobile_any_ip", False) if section.has("mobile_any_ip") else None
        if mobile is not None:
            self.mobile_refs.append(section.where("mobile_any_ip"))
        granted = None
        if section.has("granted"):
            try:
                granted = parse_date(section.raw("granted"))
            except ValueError as exc:
                self.add(section.where("granted"), f"{label}.granted: {exc}")
        return OverrideSpec(
            user=user,
            index=index,
            ip_lockdown=section.bool("ip_lockdown", False) if section.has("ip_lockdown") else None,
            allowed_networks=self.networks(section, "allowed_networks", star=False),
            mobile_any_ip=mobile,
            require_2fa=section.bool("require_2fa", False) if section.has("require_2fa") else None,
            login_hours=self.login_hours(section, "login_hours", f"{label}.login_hours"),
            reason=reason.strip(),
            expires=self.expiry(section, "expires", label),
            granted=granted,
            by=section.str("by", None),
            where=where,
        )

    def read_rules(self, top: Section, stem: str) -> None:
        if not top.has("rules"):
            return
        value = top.raw("rules")
        if not isinstance(value, list):
            self.add(top.where("rules"), f"rules: expected a list of rules, got {_kind(value)}")
            return
        self.read_items(top.list("rules"), stem)

    def read_items(self, items: Iterable[tuple[Any, Where]], stem: str, first: int = 0) -> None:
        """The ``rules`` list's items, the first of them its ``first``-th (that names a rule without id)."""
        for index, (item, where) in enumerate(items, start=first):
            if self.item_refs is not None:
                self.item_refs.append(len(self.refs))
            if isinstance(item, Mapping):
                where = item.where()
            rule = self.read_rule(item, where, f"{stem}.rules[{index}]")
            if rule is not None:
                self.rules.append(rule)
                self.rule_lines.append(where.line)

    def read_rule(self, item: Any, where: Where, default_id: str) -> RuleSpec | None:
        label = f"rule {default_id}"
        section = Section(item, self.problems, name=label, allowed=RULE_KEYS, where=where)
        if not isinstance(item, dict):
            return None
        rule_id = section.str("id", default_id).strip()
        if not rule_id:
            self.add(section.where("id"), f"{label}: id must not be empty")
            rule_id = default_id
        label = f"rule {rule_id}"
        action = section.str("action", None)
        if action is None:
            self.add(where, f"{label}: 'action' is required (allow or block)")
        elif action not in ("allow", "block"):
            self.add(section.where("action"), f"{label}: action must be allow or block, got {action!r}")
            action = None
        function = section.str("function", None)
        if function is not None and function != "*":
            self.refs.append(("function", function, section.where("function")))
        channel = section.str("channel", None)
        if channel is not None and channel != "*":
            self.refs.append(("channel", channel, section.where("channel")))
        users = self.names(section, "users", "user")
        groups = self.names(section, "groups", "group")
        countries, negated = self.countries(section, label)
        rule = RuleSpec(
            id=rule_id,
            title=section.str("title", rule_id),
            action=action or "block",
            function=None if function in (None, "*") else function,
            networks=self.networks(section, "networks", star=True),
            countries=countries,
            countries_negated=negated,
            channel=None if channel in (None, "*") else channel,
            users=users,
            groups=groups,
            priority=section.int("priority", 0),
            report_only=section.bool("report_only", False),
            expires=self.expiry(section, "expires", label),
            reason=section.str("reason", None),
            file=where.file,
        )
        if not self.define("rule id", rule_id, section.where("id") if section.has("id") else where):
            return None
        return rule if action is not None else None

    def names(self, section: Section, key: str, kind: str) -> frozenset[str] | None:
        if not section.has(key):
            return None
        items = section.list(key)
        if not items:
            self.add(section.where(key), f"{key}: empty list (omit the key to mean everyone)")
            return None
        out: set[str] = set()
        for item, item_where in items:
            if not isinstance(item, str | int) or isinstance(item, bool) or not str(item).strip():
                self.add(item_where, f"{key}: expected a {kind} name, got {_kind(item)}")
                continue
            name = canonical_user(str(item)) if kind == "user" else str(item)
            self.refs.append((kind, name, item_where))
            out.add(name)
        names = frozenset(out)
        return self.shared_sets.setdefault(names, names)  # a big policy repeats the same few sets

    def countries(self, section: Section, label: str) -> tuple[frozenset[str] | None, bool]:
        if not section.has("countries"):
            return None, False
        if not self.geoip:
            self.add(
                section.where("countries"),
                f"{label}: countries need a GeoIP database: set geoip.database in the main file",
            )
        items = section.list("countries")
        if not items:
            self.add(section.where("countries"), "countries: empty list (omit the key to mean any country)")
            return None, False
        codes: set[str] = set()
        signs: set[bool] = set()
        for item, item_where in items:
            match = _COUNTRY.match(item.strip()) if isinstance(item, str) else None
            if match is None:
                self.add(
                    item_where,
                    f"countries: expected a two-letter ISO code like GB, or '!GB' to negate, got {item!r}",
                )
                continue
            signs.add(bool(match.group(1)))
            codes.add(match.group(2).upper())
        if len(signs) > 1:
            self.add(
                section.where("countries"),
                "countries: do not mix negated ('!GB') and plain ('GB') codes in one list",
            )
        return frozenset(codes), signs == {True}

    # -- across files --------------------------------------------------------------------------
    def check_references(self) -> None:
        known = {
            "function": self.defined["function"],
            "channel": {DEFAULT_CHANNEL, *self.defined["channel"]},
            "group": self.defined["group"],
            "user": set(self.defined["user"]) | self.group_members,
        }
        for kind, name, where in self.refs:
            if name not in known[kind]:
                self.add(where, unknown_reference(kind, name, known[kind]))
        if MOBILE_CHANNEL not in self.defined["channel"]:
            for where in self.mobile_refs:
                self.add(where, NO_MOBILE_CHANNEL)

    def spec(self) -> PolicySpec:
        return PolicySpec(
            channels=tuple(self.channels),
            functions=tuple(self.functions),
            defaults=self.defaults,
            groups=tuple(self.groups),
            users=tuple(self.users),
            rules=tuple(self.rules),
            rule_lines=self.rule_lines,
        )


NO_MOBILE_CHANNEL = "mobile_any_ip: there is no channel named 'mobile' to exempt; define it under channels"


def unknown_reference(kind: str, name: str, known: Iterable[str]) -> str:
    """The message for a reference to a ``kind`` ('function', 'channel', 'group', 'user') nobody defines."""
    if kind == "user":
        return f"users: unknown user {name!r} (a user exists when `users` or a group lists them)"
    key = "groups" if kind == "group" else kind
    return f"{key}: unknown {kind} {name!r}{_known(known)}"


def _known(names: Iterable[str]) -> str:
    ordered = sorted(names)
    return f" (defined: {', '.join(ordered)})" if ordered else " (none is defined)"


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return f"{type(value).__name__} {value!r}"


def read_policy_files(files: Iterable[Path], problems: Problems, *, geoip: bool) -> PolicySpec:
    """Read every policy file, in order, into one spec; problems are recorded, not raised."""
    reader = _Reader(problems, geoip=geoip)
    for path in files:
        try:
            data = load_yaml(path)
        except ConfigError as exc:
            for problem in exc.problems:
                problems.add(problem.where, problem.message)
            continue
        reader.read_file(data, path)
    reader.check_references()
    return reader.spec()
