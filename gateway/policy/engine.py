"""The compiled policy and its decision function (DESIGN.md §3).

A request is judged in this order: channel, functions, the rule decision
(§3.3), then login hours (§3.4); 2FA is the caller's, from
``decision.settings.require_2fa``.

Finding the deciding rule walks an index, not the rule list (STYLE.md rule 4).
Rules are bucketed by priority, then function (a named one or ``*``), then
subject (one user, one group, or everyone). A request looks only at the buckets
of its functions and of its user and the user's groups. Within a bucket, rules
that name networks sit in a prefix table (one dict probe per prefix length
present), rules that name countries in a dict by country, and the rest in a
short list sorted by key. Buckets are visited from the most specific level
down; the first level that yields a match decides, so the work per request does
not grow with the number of rules. Each policy file's rules are indexed on their
own, so a reload reuses the index of every file it did not read again; the
files' tiers are then merged copy-on-write (:func:`_merged_tier`), so a level
is one bucket per key whatever the number of files.

Report-only rules never change what is enforced: the enforced verdict is the
one the rules give as if report-only rules did not exist; when a more specific
report-only ``block`` would have denied a request that is allowed, the decision
is ``deny`` with ``enforced=False`` and that rule (logged as ``would_deny``). A
report-only rule can therefore neither open a hole (the example's
``Office only for EU staff`` rule does not lift the lock-down) nor close one.
``mode: report-only`` makes every deny ``enforced=False``.

Anonymous requests match only everyone rules, except that a request whose
functions are all ``public`` is allowed outright (the login page must load for
an exempt user abroad); one that is also in a non-public function is judged
normally (fail closed). Login hours apply only to requests with a user.
"""

from __future__ import annotations

import gc
import operator
import sys
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Concatenate, Literal, ParamSpec, TypeVar
from zoneinfo import ZoneInfo

from gateway.policy.agents import compile_agent
from gateway.policy.geoip import GeoIP, GeoIPError
from gateway.policy.loader import read_policy_files
from gateway.policy.model import Decision, EffectiveSettings, IPAddress, RequestFacts
from gateway.policy.networks import Cidr, PrefixTable, judged_address
from gateway.policy.patterns import PathMatcher
from gateway.policy.rules import (
    FILE_SHIFT,
    NETWORK_OFFSETS,
    NO_NETWORK,
    Rule,
    SettingsSegment,
    SettingsTimeline,
    compile_rules,
    expiry_instant,
    office_zone_name,
    rank_network,
    settings_timeline,
)
from gateway.policy.sources import PolicySource, merge_sources, read_sources
from gateway.policy.spec import DEFAULT_CHANNEL, PolicySpec, UserSpec, canonical_user
from gateway.policy.trace import DEFAULT_RULE, explained
from gateway.settings import Settings
from gateway.yamlsrc import ConfigError, Mapping, Problems, Where, load_yaml

_STAR = ("*",)
_ORDER = operator.attrgetter("order")
# Paths and User-Agents come from clients: the caches keyed by them are bounded in
# entries and skip long values, so a flood of random 8 KB URLs cannot grow them to
# hundreds of megabytes (worst case here: 16384 entries x 2 KB keys).
_CACHE_SIZE = 16384
_CACHEABLE = 1024  # longer paths or User-Agents are judged uncached

PUBLIC_RULE = "functions.{}.public"
PUBLIC_TITLE = "Public function: anonymous requests may reach it"
_NO_GROUPS: frozenset[str] = frozenset()


class _Bucket:
    """Rules of one (priority, function, subject): by network, by country, and the rest.

    Every list holds rules sorted by :attr:`Rule.plain`, highest first: within
    one list a rule's rank is its ``plain`` plus the same network offset
    (:data:`NETWORK_OFFSETS`), so the order is the order of their ranks and the
    decision adds the offset as it goes; no rank is stored per network block.
    Most buckets of a big policy hold one or two rules, so the parts a bucket
    does not use stay shared empty values, and sealed lists become tuples.
    """

    __slots__ = ("by_country", "nets", "plain", "plain_hits")

    def __init__(self) -> None:
        self.nets: PrefixTable[Rule] = _NO_NETS
        self.by_country: dict[str, Sequence[Rule]] = _NO_COUNTRIES
        self.plain: Sequence[Rule] = ()
        self.plain_hits: tuple[Sequence[Rule], int] | None = None  # (plain, 0) as the decision takes it

    def add(self, rule: Rule, cidrs: Sequence[Cidr] | None) -> None:
        """``cidrs``: the rule's network blocks (None when it names no network)."""
        if cidrs is not None:
            if self.nets is _NO_NETS:
                self.nets = PrefixTable()
            for cidr in cidrs:
                self.nets.add(cidr, rule)
        elif _by_country(rule):
            if self.by_country is _NO_COUNTRIES:
                self.by_country = {}
            for code in rule.countries or ():
                hits = self.by_country.setdefault(code, [])
                assert isinstance(hits, list)
                hits.append(rule)
        else:
            self.plain = (*self.plain, rule)

    def seal(self) -> None:
        """Sort every list most specific first, so scans can stop early."""
        if self.nets is not _NO_NETS:
            self.nets.seal(_plain_of)
        for code, hits in self.by_country.items():
            self.by_country[code] = tuple(sorted(hits, key=_plain_of, reverse=True))
        if len(self.plain) > 1:
            self.plain = tuple(sorted(self.plain, key=_plain_of, reverse=True))
        self.plain_hits = (self.plain, 0) if self.plain else None


    def edited(self, drop: list[_Placed], put: list[_Placed]) -> _Bucket:
        """A new bucket without ``drop``'s rules (by identity) and with ``put``'s, as built; this one is unchanged."""
        out = _Bucket()
        out.nets, out.by_country, out.plain = self.nets, self.by_country, self.plain
        net_drop = [(cidr, rule) for rule, cidrs in drop if cidrs is not None for cidr in cidrs]
        net_put = [(cidr, rule) for rule, cidrs in put if cidrs is not None for cidr in cidrs]
        if net_drop or net_put:
            nets = self.nets.edited(net_drop, net_put, _plain_of)
            out.nets = nets if nets else _NO_NETS
        gone = {id(rule) for rule, cidrs in drop if cidrs is None}
        came = [rule for rule, cidrs in put if cidrs is None]
        by_country = [rule for rule, cidrs in (*drop, *put) if cidrs is None and _by_country(rule)]
        if by_country:
            countries = dict(self.by_country)
            for code in {code for rule in by_country for code in rule.countries or ()}:
                hits = [rule for rule in countries.get(code, ()) if id(rule) not in gone]
                hits += [rule for rule in came if _by_country(rule) and code in (rule.countries or ())]
                if hits:
                    countries[code] = tuple(sorted(hits, key=_plain_of, reverse=True))
                else:
                    del countries[code]
            out.by_country = countries or _NO_COUNTRIES
        if any(cidrs is None and not _by_country(rule) for rule, cidrs in (*drop, *put)):
            plain = [rule for rule in self.plain if id(rule) not in gone]
            plain += [rule for rule in came if not _by_country(rule)]
            out.plain = tuple(sorted(plain, key=_plain_of, reverse=True))
        out.plain_hits = (out.plain, 0) if out.plain else None
        return out

    def empty(self) -> bool:
        return self.nets is _NO_NETS and not self.by_country and not self.plain


def _by_country(rule: Rule) -> bool:
    """Whether a rule naming no network goes to a bucket's ``by_country`` (else to ``plain``)."""
    return rule.countries is not None and not rule.countries_negated


def _plain_of(rule: Rule) -> int:
    return rule.plain


_NO_NETS: PrefixTable[Rule] = PrefixTable()
_NO_COUNTRIES: dict[str, Sequence[Rule]] = {}


_R = TypeVar("_R")
_Args = ParamSpec("_Args")
_K = TypeVar("_K")
_A = TypeVar("_A")
_B = TypeVar("_B")


def _cached(policy: Policy, method: Callable[Concatenate[Policy, _Args], _R]) -> Callable[_Args, _R]:
    """An LRU cache over one policy's method that does not keep the policy alive.

    ``lru_cache(self.method)`` would hold the bound method, hence the policy: a
    reference cycle, so a replaced policy (hundreds of thousands of objects)
    would wait for a full garbage collection, which then walks every one of
    them. Through a weak reference the old policy is freed as soon as the last
    request using it is done.
    """
    ref = weakref.ref(policy)

    def call(*args: _Args.args, **kwargs: _Args.kwargs) -> _R:
        owner = ref()
        assert owner is not None, "the cache lives inside its policy"
        return method(owner, *args, **kwargs)

    return lru_cache(maxsize=_CACHE_SIZE)(call)  # type: ignore[return-value]


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while compiling.

    Compiling a big policy allocates hundreds of thousands of small objects that
    all live as long as the policy; generational collections triggered by those
    allocations scan them again and again for nothing (about 70% of compile
    time at 100,000 rules). Reference counting still frees garbage meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


Tier = dict[str, dict[str, _Bucket]]  # function ('*' or name) -> subject ('u:x', 'g:y', '*') -> bucket


_Placed = tuple[Rule, Sequence[Cidr] | None]  # a rule and its network blocks (None: it names no network)


def _places(rule: Rule) -> tuple[int, str, Sequence[str], Sequence[Cidr] | None]:
    """Where a rule goes in the index: priority, function, subjects; and its network blocks."""
    spec = rule.spec
    subjects: Sequence[str]
    # interned: one string per user or group, whatever the number of rules naming them (and _plan's)
    if spec.users:
        subjects = [sys.intern(f"u:{user}") for user in spec.users]
    elif spec.groups:
        subjects = [sys.intern(f"g:{group}") for group in spec.groups]
    else:
        subjects = _STAR
    cidrs = None
    if spec.networks is not None:  # unpacked once, shared by the rule's buckets
        cidrs = [cidr for entry in spec.networks for cidr in entry.cidrs]
    return spec.priority, spec.function or "*", subjects, cidrs


def build_index(rules: Iterable[Rule]) -> dict[int, Tier]:
    """Tiers by priority."""
    tiers: dict[int, Tier] = {}
    for rule in rules:
        priority, function, subjects, cidrs = _places(rule)
        by_function = tiers.setdefault(priority, {}).setdefault(function, {})
        for subject in subjects:
            bucket = by_function.get(subject)
            if bucket is None:
                bucket = by_function[subject] = _Bucket()
            bucket.add(rule, cidrs)
    for tier in tiers.values():
        for by_subject in tier.values():
            for bucket in by_subject.values():
                bucket.seal()
    return tiers


def patch_index(tiers: dict[int, Tier], removed: Iterable[Rule], added: Iterable[Rule]) -> dict[int, Tier]:
    """``build_index`` of a file's rules after an edit, from the index of its rules before it.

    ``tiers`` is not changed (the running policy uses it): only the buckets the
    removed and added rules are in are made anew (:meth:`_Bucket.edited`), and
    the dicts on their way; everything else is shared.
    """
    edits: dict[tuple[int, str, str], tuple[list[_Placed], list[_Placed]]] = {}
    for side, rules in ((0, removed), (1, added)):
        for rule in rules:
            priority, function, subjects, cidrs = _places(rule)
            for subject in subjects:
                edits.setdefault((priority, function, subject), ([], []))[side].append((rule, cidrs))
    out = dict(tiers)
    copied: set[int] = set()  # ids of the dicts made here (the others are the old index's own)
    for (priority, function, subject), (drop, put) in edits.items():
        tier = _own(out, priority, copied)
        by_subject = _own(tier, function, copied)
        bucket = (by_subject.get(subject) or _Bucket()).edited(drop, put)
        if bucket.empty():
            by_subject.pop(subject, None)
            if not by_subject:
                del tier[function]
                if not tier:
                    del out[priority]
        else:
            by_subject[subject] = bucket
    return out


def _own(parent: dict[_K, dict[_A, _B]], key: _K, copied: set[int]) -> dict[_A, _B]:
    """``parent[key]`` as a dict made here (a copy of the old one, or a new one), to change."""
    child = parent.get(key)
    if child is None:
        child = parent[key] = {}
    elif id(child) not in copied:
        child = parent[key] = dict(child)
    copied.add(id(child))
    return child


@dataclass(frozen=True, slots=True)
class _Segment:
    """The index of one policy file's rules (file 0: the defaults' and overrides' rules).

    Each file is indexed on its own, so a reload that reuses a big file's rules
    (:func:`compile_rules`) reuses its index too; the policy merges the files'
    tiers (:func:`_merged_tier`) without changing them.
    """

    start: int  # its rules are policy.rules[start:end]
    end: int
    tiers: dict[int, Tier]


def _segments(rules: tuple[Rule, ...], previous: tuple[Rule, ...], reusable: Iterable[_Segment]) -> list[_Segment]:
    """Index the rules file by file, from the file's previous index where there is one.

    A file whose rules are all the same objects as before keeps its index; one
    that an edit changed in part (the others are reused by :func:`compile_rules`)
    has its index patched (:func:`patch_index`); file 0 is small and always rebuilt.
    """
    by_file = {
        previous[s.start].spec.file: s
        for s in reusable
        if s.end > s.start and previous[s.start].order >> FILE_SHIFT  # a policy file's own, not file 0
    }
    out: list[_Segment] = []
    start = 0
    while start < len(rules):
        file = rules[start].order >> FILE_SHIFT
        end = bisect_left(rules, (file + 1) << FILE_SHIFT, lo=start, key=_ORDER)  # rules are in order
        old = by_file.get(rules[start].spec.file) if file else None
        tiers = None
        if old is not None:
            before, after = previous[old.start:old.end], rules[start:end]
            if len(before) == len(after) and all(map(operator.is_, before, after)):
                tiers = old.tiers
            else:
                tiers = _patched(old.tiers, before, after)
        out.append(_Segment(start, end, tiers if tiers is not None else build_index(rules[start:end])))
        start = end
    return out


def _patched(tiers: dict[int, Tier], before: tuple[Rule, ...], after: tuple[Rule, ...]) -> dict[int, Tier] | None:
    """The index of ``after`` patched from ``tiers`` (the index of ``before``); None when most rules changed."""
    limit = len(after) // 2
    kept = {id(rule) for rule in after}
    removed = [rule for rule in before if id(rule) not in kept]
    if len(removed) > limit:
        return None
    kept = {id(rule) for rule in before}
    added = [rule for rule in after if id(rule) not in kept]
    if len(added) > limit:
        return None
    return patch_index(tiers, removed, added)


def _merged_tier(parts: list[Tier]) -> Tier:
    """One tier from the files' tiers of a priority, so a decision looks at one bucket per key, not one per file.

    Copy-on-write: a function or subject only one file has is that file's own
    dict or bucket, shared (a file's index must stay as built: a reload reuses
    it); only what several files have is merged, into new objects.
    """
    if len(parts) == 1:
        return parts[0]
    merged: Tier = {}
    copied: set[int] = set()  # ids of the subject dicts made here (the others are a file's own)
    for tier in parts:
        for function, by_subject in tier.items():
            have = merged.get(function)
            if have is None:
                merged[function] = by_subject
                continue
            if id(have) not in copied:
                have = merged[function] = dict(have)
                copied.add(id(have))
            for subject, bucket in by_subject.items():
                old = have.get(subject)
                have[subject] = bucket if old is None else _merged_bucket(old, bucket)
    return merged


def _merged_bucket(a: _Bucket, b: _Bucket) -> _Bucket:
    """A new bucket with the rules of both (neither is changed)."""
    out = _Bucket()
    out.nets = b.nets if a.nets is _NO_NETS else a.nets if b.nets is _NO_NETS else a.nets.merged(b.nets)
    if a.by_country and b.by_country:
        out.by_country = {
            code: tuple(sorted((*a.by_country.get(code, ()), *b.by_country.get(code, ())), key=_plain_of, reverse=True))
            for code in {**a.by_country, **b.by_country}
        }
    else:
        out.by_country = a.by_country or b.by_country
    if a.plain and b.plain:
        out.plain = tuple(sorted((*a.plain, *b.plain), key=_plain_of, reverse=True))
    else:
        out.plain = a.plain or b.plain
    out.plain_hits = (out.plain, 0) if out.plain else None
    return out


@dataclass(frozen=True, slots=True)
class _PathInfo:
    functions: tuple[str, ...]
    public: bool  # every function is public (and there is at least one)
    public_rule: str  # the pseudo rule id an anonymous request to it is allowed by


@dataclass(frozen=True, slots=True)
class _UserInfo:
    groups: frozenset[str]
    levels: tuple[tuple[str, ...], ...]  # subject keys to visit, most specific level first
    timeline: SettingsTimeline


# The rule phase's answer: the enforced winner, and the winner counting report-only rules.
_RuleVerdict = tuple[Rule | None, Rule | None]



def _runs(method: str, methods: frozenset[str]) -> bool:
    """Whether a request with ``method`` runs a function bound to ``methods`` (none: any method).

    HEAD runs the GET handler in almost every back end (RFC 9110 §9.3.2), its side effects
    and headers included: a function bound to GET is HEAD's too.
    """
    return not methods or method in methods or (method == "HEAD" and "GET" in methods)

class Policy:
    """The compiled policy: immutable after load, safe to share, cheap to swap on reload."""

    def __init__(
        self,
        spec: PolicySpec,
        *,
        default_action: str = "allow",
        mode: str = "enforce",
        case_insensitive_paths: bool = False,
        geoip: GeoIP | None = None,
        totp_secrets_file: Path | None = None,
        totp_configured: bool = False,
        now: datetime | None = None,
        previous: Policy | None = None,
    ) -> None:
        """``previous``: the policy this one replaces, whose unchanged rules are reused (:func:`compile_rules`)."""
        self.spec = spec
        self.default_action = default_action
        self.mode = mode
        self.report_only = mode == "report-only"
        self.geoip = geoip
        self.totp_secrets_file = totp_secrets_file
        self.totp_configured = totp_configured
        self.office = ZoneInfo(office_zone_name(spec.defaults))
        self.sources: tuple[PolicySource, ...] = ()  # the files it was read from, for the next reload
        with _gc_paused():
            self._compile(spec, case_insensitive_paths, now, previous)

    def _compile(
        self, spec: PolicySpec, case_insensitive_paths: bool, now: datetime | None, previous: Policy | None
    ) -> None:
        rules, self._lines = compile_rules(spec, previous.rules if previous is not None else ())
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.rule_count = len(self.rules)
        self._segments: list[_Segment] = _segments(
            self.rules, previous.rules if previous else (), previous._segments if previous else ()
        )
        priorities = sorted({p for segment in self._segments for p in segment.tiers}, reverse=True)
        # by priority, highest first: that priority's tier of every file, merged into one
        self._tiers: list[Tier] = [
            _merged_tier([s.tiers[p] for s in self._segments if p in s.tiers]) for p in priorities
        ]

        # channels: first match wins, in file order
        self._channel_names = tuple(c.name for c in spec.channels)
        self._channel_agents = tuple(
            tuple(compile_agent(p) for p in c.user_agents) for c in spec.channels
        )
        self._channel_paths = tuple(
            PathMatcher(((0, p) for p in c.paths), lower=case_insensitive_paths) if c.paths else None
            for c in spec.channels
        )
        self._agent_cache = _cached(self, Policy._agents_uncached)
        self._channel_cache = _cached(self, Policy._channel_uncached)

        # functions
        self._functions = spec.functions
        self._function_paths = PathMatcher(
            ((index, pattern) for index, f in enumerate(spec.functions) for pattern in f.paths),
            lower=case_insensitive_paths,
        )
        self._path_cache = _cached(self, Policy._path_info)
        self._any_bound = any(f.methods for f in spec.functions)
        self._bound_cache = _cached(self, Policy._bound_methods)
        self._plan_cache = _cached(self, Policy._plan)
        self._default_title = f"No rule matched: default_action {self.default_action}"

        # people
        self._user_specs: dict[str, UserSpec] = {u.name: u for u in spec.users}
        group_sets: dict[str, set[str]] = {}
        for group in spec.groups:
            for member in group.members:
                group_sets.setdefault(member, set()).add(group.name)
        known = set(self._user_specs) | set(group_sets)
        self._nobody = settings_timeline(spec.defaults, None, self.office)
        self._users: dict[str, _UserInfo] = {}
        # members of the same groups share one set and one level (10,000 users, a few hundred groups)
        group_levels: dict[frozenset[str], tuple[frozenset[str], tuple[str, ...]]] = {}
        for name in sorted(known):
            groups = frozenset(group_sets.get(name, ()))
            shared = group_levels.get(groups)
            if shared is None:
                shared = group_levels[groups] = (groups, tuple(sys.intern(f"g:{g}") for g in sorted(groups)))
            groups = shared[0]
            levels: list[tuple[str, ...]] = [(sys.intern(f"u:{name}"),)]
            if groups:
                levels.append(shared[1])
            levels.append(_STAR)
            user_spec = self._user_specs.get(name)
            timeline = self._nobody  # most people simply have the defaults
            if user_spec is not None and (user_spec.overrides or user_spec.timezone):
                timeline = settings_timeline(spec.defaults, user_spec, self.office)
            self._users[name] = _UserInfo(groups, tuple(levels), timeline)
        self._anonymous_levels: tuple[tuple[str, ...], ...] = (_STAR,)

        moment = now if now is not None else datetime.now(self.office)
        self.expired_at_load: list[str] = self._expired(moment)

    # -- small public questions ----------------------------------------------------------------
    def channel_of(self, user_agent: str, path: str) -> str:
        """The request's channel: the first channel whose user_agents and paths match, else web."""
        if len(user_agent) > _CACHEABLE or len(path) > _CACHEABLE:
            return self._channel_uncached(user_agent, path)
        return self._channel_cache(user_agent, path)

    def functions_of(self, method: str, path: str) -> tuple[str, ...]:
        """The functions the (match-form) path and method belong to, in file order."""
        return self._path_for(method, path).functions

    def bound_methods(self, path: str) -> frozenset[str]:
        """The methods that the functions owning the (match-form) path are bound to (``methods``).

        What a method override could change a request on ``path`` into, as far as the rules
        can tell methods apart; empty for most paths.
        """
        if not self._any_bound:
            return frozenset()
        return self._bound_methods(path) if len(path) > _CACHEABLE else self._bound_cache(path)

    def _bound_methods(self, path: str) -> frozenset[str]:
        owners = self._function_paths.owners(path)
        return frozenset(m for index, f in enumerate(self._functions) if index in owners for m in f.methods)

    def known_user(self, user: str) -> bool:
        return canonical_user(user) in self._users

    def groups_of(self, user: str) -> frozenset[str]:
        info = self._users.get(canonical_user(user))
        return info.groups if info is not None else frozenset()

    def settings_for(self, user: str | None, at: datetime) -> EffectiveSettings:
        """The user's effective settings at ``at`` (the defaults when anonymous or unknown)."""
        return self._segment(None if user is None else canonical_user(user), at).settings

    def where_of(self, rule: Rule) -> Where:
        """The file and line ``rule`` (one of :attr:`rules`) is written at."""
        index = bisect_left(self.rules, rule.order, key=_ORDER)
        if index == len(self.rules) or self.rules[index] is not rule:
            raise ValueError(f"rule {rule.id} is not this policy's")
        return Where(rule.spec.file, self._lines[index])

    @property
    def users(self) -> tuple[str, ...]:
        """Every user the policy names (canonical form), sorted."""
        return tuple(self._users)

    def warnings(self, now: datetime) -> list[str]:
        """Lock-out risks (DESIGN.md §6), each ``file:line: message``."""
        from gateway.policy.checks import policy_warnings

        return policy_warnings(self, now)

    def overrides_report(self, now: datetime, review_days: int = 90) -> str:
        """Text for ``crm-gateway overrides``."""
        from gateway.policy.checks import overrides_text

        return overrides_text(self, now, review_days)

    def overrides_report_json(self, now: datetime, review_days: int = 90) -> dict[str, object]:
        """The same as :meth:`overrides_report`, as one JSON-ready object."""
        from gateway.policy.checks import overrides_json

        return overrides_json(self, now, review_days)

    def rules_allow(
        self, ip: IPAddress, channel: str, functions: tuple[str, ...], user: str | None, at: datetime
    ) -> tuple[bool, Rule | None]:
        """The rule phase alone, as enforced (for ``check``'s simulations).

        No public-function exemption, no login hours, report-only rules ignored,
        ``mode`` ignored: what the rules themselves would do once enforced.
        """
        canonical = None if user is None else canonical_user(user)
        info = self._users.get(canonical) if canonical is not None else None
        country = self.geoip.country(ip) if self.geoip is not None else None
        plan = self._plan_cache(functions, canonical if canonical is not None and info is not None else "")
        groups = info.groups if info is not None else _NO_GROUPS
        rule = self._match(ip.version == 4, int(ip), country, channel, plan, groups, at)[0]
        if rule is None:
            return self.default_action == "allow", None
        return not rule.block, rule

    def segment_for(self, user: str | None, at: datetime) -> SettingsSegment:
        """Effective settings with the zone and the source of the login hours."""
        return self._segment(None if user is None else canonical_user(user), at)

    # -- the decision --------------------------------------------------------------------------
    def decide(self, facts: RequestFacts, *, explain: bool = False) -> Decision:
        """Judge one request (DESIGN.md §3): channel, functions, rules, then login hours.

        This is the hot path: everything that does not depend on the request was
        done at load, and what depends only on its path, User-Agent or user is
        cached.
        """
        path = self._path_for(facts.method, facts.path)
        channel = self.channel_of(facts.user_agent, facts.path)
        user = facts.user
        info = None
        if user is not None:
            user = canonical_user(user)
            info = self._users.get(user)
        at = facts.at
        segment = (info.timeline if info is not None else self._nobody).at(at)
        ip = facts.client_ip
        v4 = ip.version == 4
        if not v4:
            ip = judged_address(ip)  # the caller should have mapped IPv4-mapped IPv6; be sure
            v4 = ip.version == 4
        number = int(ip)
        geoip = self.geoip
        country = geoip.country_by_number(number, v4, ip) if geoip is not None else None

        verdict: _RuleVerdict | None = None
        rule_id: str | None
        title: str | None
        if user is None and path.public:
            action: Literal["allow", "deny"] = "allow"
            enforced, reason, rule_id, title = True, None, path.public_rule, PUBLIC_TITLE
        else:
            verdict = self._match(
                v4, number, country, channel,
                self._plan_cache(path.functions, user if info is not None and user is not None else ""),
                info.groups if info is not None else _NO_GROUPS, at,
            )  # fmt: skip
            rule = verdict[0]
            if rule is None:
                allows = self.default_action == "allow"
                rule_id, title = DEFAULT_RULE, self._default_title
                reason = None if allows else "ip_not_allowed"
            else:
                allows = not rule.block
                rule_spec = rule.spec
                rule_id, title = rule_spec.id, rule_spec.title
                reason = None if allows else rule.deny_reason
            top = verdict[1]
            hours = segment.settings.login_hours
            if not allows:
                action, enforced = "deny", not self.report_only
            elif user is not None and hours is not None and not hours.contains(at, segment.zone):
                action, enforced, reason = "deny", not self.report_only, "outside_login_hours"
                rule_id, title = segment.hours_source, segment.hours_title
            elif top is not None and top is not rule and top.report_only and top.block:
                action, enforced, reason, rule_id, title = "deny", False, top.deny_reason, top.id, top.title
            else:
                action, enforced = "allow", True
        decision = Decision(
            action=action,
            enforced=enforced,
            reason=reason,
            rule_id=rule_id,
            rule_title=title,
            channel=channel,
            functions=path.functions,
            public=path.public,
            country=country,
            settings=segment.settings,
            trace=(),
        )
        if explain:
            return explained(
                self, decision, facts, user, info.groups if info is not None else _NO_GROUPS, path.public,
                segment, verdict[0] if verdict is not None else None,
            )  # fmt: skip
        return decision

    def _plan(self, functions: tuple[str, ...], user: str) -> tuple[tuple[_Bucket, ...], ...]:
        """The buckets a request visits, most specific level first; empty levels left out.

        A level is (tier, function rank, subject rank): all buckets in one level
        tie on the first three components of the key, so the first level with a
        match holds the winner.
        """
        info = self._users.get(user) if user else None
        subject_levels = info.levels if info is not None else self._anonymous_levels
        function_levels = (functions, _STAR) if functions else (_STAR,)
        plan: list[tuple[_Bucket, ...]] = []
        for tier in self._tiers:
            for function_keys in function_levels:
                for subject_keys in subject_levels:
                    level = tuple(
                        bucket
                        for function_key in function_keys
                        for subject_key in subject_keys
                        if (bucket := tier.get(function_key, {}).get(subject_key)) is not None
                    )
                    if level:
                        plan.append(level)
        return tuple(plan)

    def _match(
        self,
        v4: bool,
        number: int,
        country: str | None,
        channel: str,
        plan: tuple[tuple[_Bucket, ...], ...],
        groups: frozenset[str],
        at: datetime,
    ) -> _RuleVerdict:
        """Walk the plan; the first level with an enforced match decides (see :meth:`_plan`).

        Returns the enforced winner and the winner counting report-only rules.
        """
        best: Rule | None = None
        best_key: int | None = None
        best_network = NO_NETWORK - 1  # the network component of best_key
        top: Rule | None = None
        top_key: int | None = None
        offsets = NETWORK_OFFSETS
        for level in plan:
            for bucket in level:
                candidates: list[tuple[Sequence[Rule], int]] = []  # rules, and what their network adds
                nets = bucket.nets
                for prefix, mask, table in nets.v4 if v4 else nets.v6:
                    if best_network > prefix:
                        break  # shorter prefixes cannot beat what this level already has
                    found = table.get(number & mask)
                    if found is not None:  # one rule is kept bare (PrefixTable)
                        candidates.append(((found,) if isinstance(found, Rule) else found, offsets[prefix]))
                if country is not None and bucket.by_country:
                    hits = bucket.by_country.get(country)
                    if hits is not None:
                        candidates.append((hits, 0))
                plain = bucket.plain_hits
                if plain is not None:
                    candidates.append(plain)
                for hits, offset in candidates:
                    for rule in hits:
                        key = rule.plain + offset  # rule.rank(prefix or NO_NETWORK)
                        if best_key is not None and key < best_key:
                            break  # sorted: nothing further in this list can win
                        expires = rule.expires_at
                        if expires is not None and at >= expires:
                            continue
                        wanted = rule.channel
                        if wanted is not None and wanted != channel:
                            continue
                        codes = rule.countries
                        if codes is not None and (country in codes) is rule.countries_negated:
                            continue
                        also = rule.also_groups
                        if also is not None and also.isdisjoint(groups):
                            continue
                        if top_key is None or key > top_key:
                            top, top_key = rule, key
                        if not rule.report_only and (best_key is None or key > best_key):
                            best, best_key, best_network = rule, key, rank_network(key)
            if best is not None:
                break
        return best, top

    # -- helpers -------------------------------------------------------------------------------
    def _segment(self, user: str | None, at: datetime) -> SettingsSegment:
        info = self._users.get(user) if user is not None else None
        return (info.timeline if info is not None else self._nobody).at(at)

    def _agents_uncached(self, user_agent: str) -> tuple[int, ...]:
        return tuple(
            index
            for index, agents in enumerate(self._channel_agents)
            if not agents or any(agent.search(user_agent) for agent in agents)
        )

    def _channel_uncached(self, user_agent: str, path: str) -> str:
        agents = self._agent_cache(user_agent) if len(user_agent) <= _CACHEABLE else self._agents_uncached(user_agent)
        for index in agents:
            matcher = self._channel_paths[index]
            if matcher is None or matcher.owners(path):
                return self._channel_names[index]
        return DEFAULT_CHANNEL

    def _path_for(self, method: str, path: str) -> _PathInfo:
        if len(path) > _CACHEABLE:
            return self._path_info(method, path)
        return self._path_cache(method, path)

    def _path_info(self, method: str, path: str) -> _PathInfo:
        owners = self._function_paths.owners(path)
        chosen = [f for index, f in enumerate(self._functions) if index in owners and _runs(method, f.methods)]
        names = tuple(f.name for f in chosen)
        public = bool(chosen) and all(f.public for f in chosen)
        return _PathInfo(names, public, PUBLIC_RULE.format(names[0]) if public else "")

    def _expired(self, now: datetime) -> list[str]:
        out: list[str] = []
        for rule in self.rules:
            if rule.expires_at is not None and rule.expires_at <= now and not rule.id.startswith("users."):
                out.append(f"{self.where_of(rule)}: rule {rule.id} ({rule.title}) expired on {rule.expires_text}")
        for user in self.spec.users:
            for override in user.overrides:
                if override.expires is not None and expiry_instant(override.expires, self.office) <= now:
                    out.append(
                        f"{override.where}: override {override.id} ({override.reason}) "
                        f"expired on {override.expires.text}"
                    )
        return out


def _main_file_where(settings: Settings, key: str) -> Where:
    """Where ``key`` is in the main file (Settings keep values, not lines)."""
    try:
        data = load_yaml(settings.path)
    except ConfigError:
        return Where(str(settings.path), 1)
    if isinstance(data, Mapping):
        return data.where(key)
    return Where(str(settings.path), 1)


def load_policy(
    settings: Settings, problems: Problems, *, now: datetime | None = None, previous: Policy | None = None
) -> Policy:
    """Read, validate and compile the policy files that ``settings`` names.

    Every problem goes to ``problems`` (the caller raises); when there are any,
    an empty policy is returned so that nothing half-checked is ever compiled.
    ``now`` is when "already expired" is judged for ``expired_at_load``.
    ``previous`` is the running policy on a reload: the files it was read from
    that are unchanged are not read again (:mod:`gateway.policy.sources`).
    """
    before = len(problems.items)
    geoip = None
    if settings.geoip_database is not None:
        try:
            geoip = GeoIP(settings.geoip_database)
        except GeoIPError as exc:
            problems.add(_main_file_where(settings, "geoip"), f"geoip.database: {exc}")
    with_geoip = settings.geoip_database is not None
    # An edit of a big file makes ~100,000 long-lived objects too (see _gc_paused). Paused until the
    # compile's own pause, which follows: re-enabled in between, a full collection would walk them
    # all (+0.3 s measured on an insert at the top of 100,000 rules, the event loop blocked meanwhile).
    with _gc_paused():
        sources = read_sources(settings.policy_files, geoip=with_geoip, previous=previous.sources if previous else ())
    merged = merge_sources(sources, problems)
    if merged is None:  # a name defined in two files: one reader over all files reports it exactly
        sources = []
        merged = read_policy_files(settings.policy_files, problems, geoip=with_geoip)
    spec = merged
    if len(problems.items) > before:
        spec, sources = PolicySpec(), []
    policy = Policy(
        spec,
        default_action=settings.default_action,
        mode=settings.mode,
        case_insensitive_paths=settings.case_insensitive_paths,
        geoip=geoip,
        totp_secrets_file=settings.totp.secrets_file if settings.totp is not None else None,
        totp_configured=settings.totp is not None,
        now=now,
        previous=previous,
    )
    policy.sources = tuple(sources)
    return policy
