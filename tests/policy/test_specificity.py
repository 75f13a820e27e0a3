"""Rule decisions (DESIGN.md §3.3, §3.5, §5): one small policy per case, one request, one verdict.

Every case states, in its description, the rule of the contract it pins down:
each tie-break of the specificity order, IPv6, ranges, countries (negated and
unknown addresses), anonymous requests and public functions, report-only,
expiry, priority, defaults and per-user overrides, reason codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.policy import Policy
from tests.policy.world import (
    FRANCE,
    GERMANY_V6,
    HOME,
    IRELAND,
    MOBILE_APP,
    MONDAY,
    OFFICE,
    PRIVATE,
    WAREHOUSE,
    PolicyMaker,
    make_facts,
)

# Channels, functions and groups every case can use (people as in the DESIGN.md example).
LAB = """
channels:
  mobile:
    user_agents: ['^AcmeCRM-Mobile/']
    paths: ['/api/mobile/**']
functions:
  login: {paths: ['/login'], public: true}
  static: {paths: ['/static/**'], public: true}
  clock-in: {paths: ['/timeclock/clock-in'], methods: [POST]}
  export: {paths: ['/**/export', '/reports/*/csv']}
  billing: {paths: ['/billing/**', '/invoices/**']}
  contacts: {paths: ['/contacts/**', '/api/mobile/contacts/**']}
groups:
  warehouse: [jim, bob]
  sales: [alice]
  project-managers: [pat]
"""

# indented like the cases' own text, which is dedented as a whole
LOCKDOWN = """
        defaults:
          ip_lockdown: true
          allowed_networks: [193.167.2.0/24]
          mobile_any_ip: true
"""

Verdict = tuple[str, bool, str | None, str | None]


def allow(rule_id: str) -> Verdict:
    return ("allow", True, None, rule_id)


def deny(reason: str, rule_id: str) -> Verdict:
    return ("deny", True, reason, rule_id)


def would_deny(reason: str, rule_id: str) -> Verdict:
    """Report-only: logged as would_deny, forwarded."""
    return ("deny", False, reason, rule_id)


@dataclass(frozen=True)
class Case:
    desc: str
    policy: str
    request: dict[str, Any]
    expect: Verdict
    main: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


CASES = [
    # --- 1. priority -----------------------------------------------------------------------
    Case(
        "priority: a ban on * with priority 10 beats a named-function users allow",
        """
        rules:
          - {id: ban, action: block, users: [jim], priority: 10}
          - {id: billing-ok, action: allow, function: billing, users: [jim]}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "jim"},
        deny("user_blocked", "ban"),
    ),
    Case(
        "priority: an allow with priority 5 beats a more specific block of priority 0",
        """
        rules:
          - {id: no-billing, action: block, function: billing, users: [jim], networks: [193.167.2.10]}
          - {id: escape-hatch, action: allow, priority: 5}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "jim"},
        allow("escape-hatch"),
    ),
    Case(
        "priority: a negative priority loses to an everyone `*` rule of priority 0",
        """
        rules:
          - {id: demoted, action: allow, function: billing, users: [jim], priority: -1}
          - {id: closed, action: block}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "jim"},
        deny("ip_not_allowed", "closed"),
    ),
    # --- 2. function -----------------------------------------------------------------------
    Case(
        "function: a named-function everyone rule beats a `*` users rule",
        """
        rules:
          - {id: no-export, action: block, function: export}
          - {id: jim-anything, action: allow, users: [jim], networks: [193.167.2.10]}
        """,
        {"ip": OFFICE, "path": "/contacts/export", "user": "jim"},
        deny("function_blocked", "no-export"),
    ),
    Case(
        "function: a rule on another function does not match; the `*` rule decides",
        """
        rules:
          - {id: no-export, action: allow, function: export}
          - {id: closed, action: block}
        """,
        {"ip": OFFICE, "path": "/contacts/1", "user": "jim"},
        deny("ip_not_allowed", "closed"),
    ),
    # --- 3. subject ------------------------------------------------------------------------
    Case(
        "subject: a users rule beats a groups rule",
        """
        rules:
          - {id: warehouse-no-billing, action: block, function: billing, groups: [warehouse]}
          - {id: jim-billing, action: allow, function: billing, users: [jim]}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "jim"},
        allow("jim-billing"),
    ),
    Case(
        "subject: a groups rule beats an everyone rule",
        """
        rules:
          - {id: nobody-billing, action: block, function: billing}
          - {id: warehouse-billing, action: allow, function: billing, groups: [warehouse]}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "bob"},
        allow("warehouse-billing"),
    ),
    Case(
        "subject: the everyone rule still holds for people outside the group",
        """
        rules:
          - {id: nobody-billing, action: block, function: billing}
          - {id: warehouse-billing, action: allow, function: billing, groups: [warehouse]}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "alice"},
        deny("function_blocked", "nobody-billing"),
    ),
    Case(
        "subject is compared before location: a users rule without networks beats an everyone /32",
        """
        rules:
          - {id: jim-out, action: block, users: [jim]}
          - {id: office-desk, action: allow, networks: [193.167.2.10]}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": "jim"},
        deny("user_blocked", "jim-out"),
    ),
    Case(
        "subject: users and groups on one rule must both hold (jim is in warehouse)",
        """
        rules:
          - {id: both, action: allow, users: [jim, alice], groups: [warehouse]}
          - {id: closed, action: block}
        """,
        {"ip": HOME, "path": "/contacts", "user": "jim"},
        allow("both"),
    ),
    Case(
        "subject: users and groups on one rule must both hold (alice is named, not in warehouse)",
        """
        rules:
          - {id: both, action: allow, users: [jim, alice], groups: [warehouse]}
          - {id: closed, action: block}
        """,
        {"ip": HOME, "path": "/contacts", "user": "alice"},
        deny("ip_not_allowed", "closed"),
    ),
    # --- 4. location -----------------------------------------------------------------------
    Case(
        "location: the longest prefix wins, a /32 allow over a /24 block",
        """
        rules:
          - {id: lan, action: block, networks: [193.167.2.0/24]}
          - {id: desk, action: allow, networks: [193.167.2.10]}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        allow("desk"),
    ),
    Case(
        "location: a /24 block beats a /16 allow",
        """
        rules:
          - {id: site, action: allow, networks: [193.167.0.0/16]}
          - {id: lan, action: block, networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        deny("ip_not_allowed", "lan"),
    ),
    Case(
        "location: a rule's longest matching entry is its specificity for that address",
        """
        rules:
          - {id: many, action: allow, networks: [193.167.0.0/16, 193.167.2.10]}
          - {id: lan, action: block, networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        allow("many"),
    ),
    Case(
        "location: the same rule's shorter entry is what counts for another address",
        """
        rules:
          - {id: many, action: allow, networks: [193.167.0.0/16, 193.167.2.10]}
          - {id: lan, action: block, networks: [193.167.2.0/24]}
        """,
        {"ip": "193.167.2.11", "path": "/contacts"},
        deny("ip_not_allowed", "lan"),
    ),
    Case(
        "location: an IPv4-mapped IPv6 network in the config counts as IPv4",
        """
        rules:
          - {id: home-line, action: allow, networks: ['::ffff:81.2.69.0/120']}
          - {id: closed, action: block}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("home-line"),
    ),
    Case(
        "location: any network beats a country",
        """
        rules:
          - {id: gb, action: allow, countries: [GB]}
          - {id: home-lines, action: block, networks: [81.2.69.0/24]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "home-lines"),
    ),
    Case(
        "location: even 0.0.0.0/0 beats a country",
        """
        rules:
          - {id: gb-out, action: block, countries: [GB]}
          - {id: any-v4, action: allow, networks: [0.0.0.0/0]}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("any-v4"),
    ),
    Case(
        "location: a country beats no location",
        """
        rules:
          - {id: closed, action: block}
          - {id: gb, action: allow, countries: [GB]}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("gb"),
    ),
    Case(
        "location: a network plus a country beats the same network alone",
        """
        rules:
          - {id: line, action: block, networks: [81.2.69.0/24]}
          - {id: line-in-gb, action: allow, networks: [81.2.69.0/24], countries: [GB]}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("line-in-gb"),
    ),
    # --- 5. channel ------------------------------------------------------------------------
    Case(
        "channel: a named channel beats `*`",
        """
        rules:
          - {id: closed, action: block}
          - {id: app, action: allow, channel: mobile}
        """,
        {"ip": HOME, "path": "/api/mobile/jobs", "ua": MOBILE_APP},
        allow("app"),
    ),
    Case(
        "channel: location is compared before channel",
        """
        rules:
          - {id: line, action: block, networks: [81.2.69.0/24]}
          - {id: app, action: allow, channel: mobile}
        """,
        {"ip": HOME, "path": "/api/mobile/jobs", "ua": MOBILE_APP},
        deny("ip_not_allowed", "line"),
    ),
    Case(
        "channel: a mobile rule does not match a web request",
        """
        rules:
          - {id: closed, action: block}
          - {id: app, action: allow, channel: mobile}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "closed"),
    ),
    Case(
        "channel: the default channel `web` can be named in a rule",
        """
        rules:
          - {id: open, action: allow}
          - {id: no-browsers, action: block, channel: web}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "no-browsers"),
    ),
    # --- 6. ties ---------------------------------------------------------------------------
    Case(
        "tie: block wins over an allow with the same key (allow written first)",
        """
        rules:
          - {id: a, action: allow, networks: [81.2.69.0/24]}
          - {id: b, action: block, networks: [81.2.69.0/24]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "b"),
    ),
    Case(
        "tie: block wins over an allow with the same key (block written first)",
        """
        rules:
          - {id: b, action: block, networks: [81.2.69.0/24]}
          - {id: a, action: allow, networks: [81.2.69.0/24]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "b"),
    ),
    Case(
        "tie: between two blocks with the same key, the one written first is named",
        """
        rules:
          - {id: first, action: block, function: export}
          - {id: second, action: block, function: export}
        """,
        {"ip": HOME, "path": "/export"},
        deny("function_blocked", "first"),
    ),
    Case(
        "tie across functions: a request in two functions, equal keys on each, block wins",
        """
        rules:
          - {id: export-lan, action: allow, function: export, networks: [193.167.2.0/24]}
          - {id: contacts-lan, action: block, function: contacts, networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts/export"},
        deny("function_blocked", "contacts-lan"),
    ),
    Case(
        "tie across groups: a user in two groups, equal keys on each, block wins",
        """
        groups: {travellers: [alice]}
        rules:
          - {id: sales-lan, action: allow, groups: [sales], networks: [193.167.2.0/24]}
          - {id: travellers-lan, action: block, groups: [travellers], networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": "alice"},
        deny("user_blocked", "travellers-lan"),
    ),
    Case(
        "across groups, the longer prefix in either group's rules wins",
        """
        groups: {travellers: [alice]}
        rules:
          - {id: sales-desk, action: allow, groups: [sales], networks: [193.167.2.10]}
          - {id: travellers-lan, action: block, groups: [travellers], networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": "alice"},
        allow("sales-desk"),
    ),
    # --- IPv6 ------------------------------------------------------------------------------
    Case(
        "IPv6: a /64 block beats a /48 allow",
        """
        rules:
          - {id: site, action: allow, networks: ['2001:db8:10::/48']}
          - {id: lab, action: block, networks: ['2001:db8:10:1::/64']}
        """,
        {"ip": "2001:db8:10:1::5", "path": "/contacts"},
        deny("ip_not_allowed", "lab"),
    ),
    Case(
        "IPv6: outside the /64 the /48 allow holds",
        """
        rules:
          - {id: site, action: allow, networks: ['2001:db8:10::/48']}
          - {id: lab, action: block, networks: ['2001:db8:10:1::/64']}
          - {id: closed, action: block}
        """,
        {"ip": "2001:db8:10:2::5", "path": "/contacts"},
        allow("site"),
    ),
    Case(
        "IPv6: a single address",
        """
        rules:
          - {id: closed, action: block}
          - {id: laptop, action: allow, networks: ['2001:db8:99::1']}
        """,
        {"ip": GERMANY_V6, "path": "/contacts"},
        allow("laptop"),
    ),
    Case(
        "IPv6: an IPv6 client does not match IPv4 networks, not even 0.0.0.0/0",
        """
        rules:
          - {id: closed, action: block}
          - {id: any-v4, action: allow, networks: [0.0.0.0/0]}
        """,
        {"ip": GERMANY_V6, "path": "/contacts"},
        deny("ip_not_allowed", "closed"),
    ),
    Case(
        "IPv6: ::/0 matches any IPv6 client and still outranks a country",
        """
        rules:
          - {id: de-out, action: block, countries: [DE]}
          - {id: any-v6, action: allow, networks: ['::/0']}
        """,
        {"ip": GERMANY_V6, "path": "/contacts"},
        allow("any-v6"),
    ),
    # --- ranges ----------------------------------------------------------------------------
    Case(
        "range: an address inside a-b matches",
        """
        rules:
          - {id: closed, action: block}
          - {id: pool, action: allow, networks: ['81.2.69.100-81.2.69.200']}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("pool"),
    ),
    Case(
        "range: an address outside a-b does not match",
        """
        rules:
          - {id: closed, action: block}
          - {id: pool, action: allow, networks: ['81.2.69.100-81.2.69.200']}
        """,
        {"ip": "81.2.69.50", "path": "/contacts"},
        deny("ip_not_allowed", "closed"),
    ),
    Case(
        "range: a range that is exactly one CIDR ranks like that CIDR (tie, block wins)",
        """
        rules:
          - {id: range, action: allow, networks: ['81.2.69.0-81.2.69.255']}
          - {id: cidr, action: block, networks: [81.2.69.0/24]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "cidr"),
    ),
    Case(
        "range: a ragged range ranks by the CIDR block holding the address (.136/29 beats /28)",
        """
        rules:
          - {id: ragged, action: allow, networks: ['81.2.69.130-81.2.69.150']}
          - {id: wider, action: block, networks: [81.2.69.128/28]}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("ragged"),
    ),
    Case(
        "range: a ragged range ranks by the CIDR block holding the address (.140/30 beats .136/29)",
        """
        rules:
          - {id: ragged, action: allow, networks: ['81.2.69.130-81.2.69.150']}
          - {id: narrower, action: block, networks: [81.2.69.140/30]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "narrower"),
    ),
    Case(
        "range: IPv6 ranges work like IPv4 ones",
        """
        rules:
          - {id: closed, action: block}
          - {id: v6-pool, action: allow, networks: ['2001:db8:99::1-2001:db8:99::ff']}
        """,
        {"ip": GERMANY_V6, "path": "/contacts"},
        allow("v6-pool"),
    ),
    # --- countries -------------------------------------------------------------------------
    Case(
        "countries: a listed country matches",
        """
        rules:
          - {id: no-fr, action: block, countries: [FR]}
        """,
        {"ip": FRANCE, "path": "/contacts"},
        deny("country_not_allowed", "no-fr"),
    ),
    Case(
        "countries: another country does not match (default_action allow)",
        """
        rules:
          - {id: no-fr, action: block, countries: [FR]}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("default_action"),
    ),
    Case(
        "countries: a negated list matches any country not in it",
        """
        rules:
          - {id: eu-office, action: block, countries: ['!GB', '!IE']}
        """,
        {"ip": FRANCE, "path": "/contacts"},
        deny("country_not_allowed", "eu-office"),
    ),
    Case(
        "countries: a negated list does not match a country in it",
        """
        rules:
          - {id: eu-office, action: block, countries: ['!GB', '!IE']}
        """,
        {"ip": IRELAND, "path": "/contacts"},
        allow("default_action"),
    ),
    Case(
        "countries: an address the database does not know matches a negated list",
        """
        rules:
          - {id: eu-office, action: block, countries: ['!GB', '!IE']}
        """,
        {"ip": PRIVATE, "path": "/contacts"},
        deny("country_not_allowed", "eu-office"),
    ),
    Case(
        "countries: an address the database does not know matches no plain list",
        """
        rules:
          - {id: closed, action: block}
          - {id: known, action: allow, countries: [GB, IE, FR, DE, AU]}
        """,
        {"ip": PRIVATE, "path": "/contacts"},
        deny("ip_not_allowed", "closed"),
    ),
    Case(
        "countries: IPv6 addresses have countries too",
        """
        rules:
          - {id: no-de, action: block, countries: [de]}
        """,
        {"ip": GERMANY_V6, "path": "/contacts"},
        deny("country_not_allowed", "no-de"),
    ),
    # --- anonymous requests and public functions -------------------------------------------
    Case(
        "anonymous: a users rule does not apply to an anonymous request",
        LOCKDOWN
        + """
        rules:
          - {id: jim-anywhere, action: allow, users: [jim]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "anonymous: a groups rule does not apply to an anonymous request",
        LOCKDOWN
        + """
        rules:
          - {id: warehouse-anywhere, action: allow, groups: [warehouse]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "anonymous: a public function is reachable despite the lock-down and a priority ban",
        LOCKDOWN
        + """
        rules:
          - {id: ban-all, action: block, priority: 100}
        """,
        {"ip": FRANCE, "path": "/login"},
        allow("functions.login.public"),
    ),
    Case(
        "anonymous: a path in a public and a non-public function is judged by the rules",
        LOCKDOWN,
        {"ip": HOME, "path": "/static/reports/export"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "a named user on a public function is judged by the rules (a password alone opens nothing)",
        LOCKDOWN,
        {"ip": HOME, "path": "/login", "user": "jim"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "username case and spaces do not dodge a rule written for the user",
        """
        rules:
          - {id: jim-out, action: block, users: [jim]}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": " JIM "},
        deny("user_blocked", "jim-out"),
    ),
    Case(
        "a user the policy does not name matches only everyone rules",
        """
        rules:
          - {id: closed, action: block}
          - {id: jim-in, action: allow, users: [jim]}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": "maria"},
        deny("ip_not_allowed", "closed"),
    ),
    # --- report-only -----------------------------------------------------------------------
    Case(
        "report-only: a report-only block that outranks the allow would deny (forwarded)",
        """
        rules:
          - {id: open, action: allow}
          - {id: trial, action: block, countries: [FR], report_only: true}
        """,
        {"ip": FRANCE, "path": "/contacts"},
        would_deny("country_not_allowed", "trial"),
    ),
    Case(
        "report-only: a report-only block never lifts the lock-down it outranks",
        LOCKDOWN
        + """
        rules:
          - {id: trial, action: block, countries: ['!GB'], report_only: true}
        """,
        {"ip": FRANCE, "path": "/contacts"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "report-only: a report-only allow never opens what the rules block",
        LOCKDOWN
        + """
        rules:
          - {id: trial, action: allow, networks: [81.2.69.0/24], report_only: true}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "report-only: a report-only block less specific than the allow changes nothing",
        """
        rules:
          - {id: desk, action: allow, networks: [193.167.2.10]}
          - {id: trial, action: block, report_only: true}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        allow("desk"),
    ),
    Case(
        "report-only: mode report-only makes every deny unenforced",
        """
        rules:
          - {id: closed, action: block}
        """,
        {"ip": HOME, "path": "/contacts"},
        would_deny("ip_not_allowed", "closed"),
        main="mode: report-only\n",
    ),
    Case(
        "report-only: mode report-only leaves allows alone",
        """
        rules:
          - {id: open, action: allow}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("open"),
        main="mode: report-only\n",
    ),
    # --- expiry (judged at facts.at) -------------------------------------------------------
    Case(
        "expiry: an expired rule is ignored",
        """
        rules:
          - {id: old-ban, action: block, expires: 2026-11-01}
        """,
        {"ip": HOME, "path": "/contacts"},
        allow("default_action"),
    ),
    Case(
        "expiry: a date holds through the end of that day in the office zone (22:59 UTC = 23:59 BST)",
        """
        defaults:
          login_hours: {timezone: Europe/London, from: '00:00', to: '23:59'}
        rules:
          - {id: summer-ban, action: block, expires: 2026-07-01}
        """,
        {"ip": HOME, "path": "/contacts", "at": at("2026-07-01T22:59:00+00:00")},
        deny("ip_not_allowed", "summer-ban"),
    ),
    Case(
        "expiry: ... and ends at midnight in the office zone (23:00 UTC = 00:00 BST next day)",
        """
        defaults:
          login_hours: {timezone: Europe/London, from: '00:00', to: '23:59'}
        rules:
          - {id: summer-ban, action: block, expires: 2026-07-01}
        """,
        {"ip": HOME, "path": "/contacts", "at": at("2026-07-01T23:00:00+00:00")},
        allow("default_action"),
    ),
    Case(
        "expiry: without an office zone a date ends at midnight UTC (still active at 23:30 UTC)",
        """
        rules:
          - {id: summer-ban, action: block, expires: 2026-07-01}
        """,
        {"ip": HOME, "path": "/contacts", "at": at("2026-07-01T23:30:00+00:00")},
        deny("ip_not_allowed", "summer-ban"),
    ),
    Case(
        "expiry: a date-time with an offset ends at that instant",
        """
        rules:
          - {id: short-ban, action: block, expires: '2026-11-23T12:00:00+01:00'}
        """,
        {"ip": HOME, "path": "/contacts", "at": at("2026-11-23T10:59:59+00:00")},
        deny("ip_not_allowed", "short-ban"),
    ),
    Case(
        "expiry: ... and from that instant on the rule is ignored",
        """
        rules:
          - {id: short-ban, action: block, expires: '2026-11-23T12:00:00+01:00'}
        """,
        {"ip": HOME, "path": "/contacts", "at": at("2026-11-23T11:00:00+00:00")},
        allow("default_action"),
    ),
    # --- default_action ----------------------------------------------------------------------
    Case(
        "default_action block: no rule matches, denied as ip_not_allowed",
        """
        rules:
          - {id: office, action: allow, networks: [193.167.2.0/24]}
        """,
        {"ip": HOME, "path": "/contacts"},
        deny("ip_not_allowed", "default_action"),
        main="default_action: block\n",
    ),
    Case(
        "default_action block: a matching allow rule still allows",
        """
        rules:
          - {id: office, action: allow, networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        allow("office"),
        main="default_action: block\n",
    ),
    # --- defaults and per-user overrides ---------------------------------------------------
    Case(
        "override allowed_networks: alice may also work from her home line",
        LOCKDOWN
        + """
        users:
          alice:
            overrides:
              - {allowed_networks: [81.2.69.0/24], reason: Works from home on Fridays}
        """,
        {"ip": HOME, "path": "/contacts", "user": "alice"},
        allow("users.alice.overrides[0]"),
    ),
    Case(
        "override allowed_networks: ... which opens nothing for jim",
        LOCKDOWN
        + """
        users:
          alice:
            overrides:
              - {allowed_networks: [81.2.69.0/24], reason: Works from home on Fridays}
        """,
        {"ip": HOME, "path": "/contacts", "user": "jim"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    Case(
        "override ip_lockdown true (defaults without lock-down): pat is blocked from home",
        """
        defaults: {ip_lockdown: false, allowed_networks: [193.167.2.0/24]}
        users:
          pat:
            overrides:
              - {ip_lockdown: true, reason: Handles payroll}
        """,
        {"ip": HOME, "path": "/contacts", "user": "pat"},
        deny("ip_not_allowed", "users.pat.overrides[0].ip_lockdown"),
    ),
    Case(
        "override ip_lockdown true: ... and may work from the defaults' allowed_networks",
        """
        defaults: {ip_lockdown: false, allowed_networks: [193.167.2.0/24]}
        users:
          pat:
            overrides:
              - {ip_lockdown: true, reason: Handles payroll}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": "pat"},
        allow("users.pat.overrides[0].allowed_networks"),
    ),
    Case(
        "override ip_lockdown true: ... while jim keeps the defaults (no lock-down)",
        """
        defaults: {ip_lockdown: false, allowed_networks: [193.167.2.0/24]}
        users:
          pat:
            overrides:
              - {ip_lockdown: true, reason: Handles payroll}
        """,
        {"ip": HOME, "path": "/contacts", "user": "jim"},
        allow("default_action"),
    ),
    Case(
        "override mobile_any_ip false: bob's app is locked down like a browser at home",
        LOCKDOWN
        + """
        users:
          bob:
            overrides:
              - {mobile_any_ip: false, reason: Lost his phone, expires: 2026-12-31}
        """,
        {"ip": HOME, "path": "/api/mobile/jobs", "user": "bob", "ua": MOBILE_APP},
        deny("ip_not_allowed", "users.bob.overrides[0].mobile_any_ip"),
    ),
    Case(
        "override mobile_any_ip false: ... yet his app works in the office",
        LOCKDOWN
        + """
        users:
          bob:
            overrides:
              - {mobile_any_ip: false, reason: Lost his phone, expires: 2026-12-31}
        """,
        {"ip": OFFICE, "path": "/api/mobile/jobs", "user": "bob", "ua": MOBILE_APP},
        allow("users.bob.overrides[0].allowed_networks"),
    ),
    Case(
        "override mobile_any_ip false: ... and jim's app still passes from home",
        LOCKDOWN
        + """
        users:
          bob:
            overrides:
              - {mobile_any_ip: false, reason: Lost his phone, expires: 2026-12-31}
        """,
        {"ip": HOME, "path": "/api/mobile/jobs", "user": "jim", "ua": MOBILE_APP},
        allow("defaults.mobile_any_ip"),
    ),
    Case(
        "override mobile_any_ip true under a lock-down that does not exempt mobile",
        """
        defaults: {ip_lockdown: true, allowed_networks: [193.167.2.0/24], mobile_any_ip: false}
        users:
          jim:
            overrides:
              - {mobile_any_ip: true, reason: Field technician, expires: 2027-06-30}
        """,
        {"ip": HOME, "path": "/api/mobile/jobs", "user": "jim", "ua": MOBILE_APP},
        allow("users.jim.overrides[0]"),
    ),
    Case(
        "an expired override no longer applies (judged at the request's time)",
        LOCKDOWN
        + """
        users:
          alice:
            overrides:
              - {ip_lockdown: false, reason: Conference week, expires: 2026-11-01}
        """,
        {"ip": HOME, "path": "/contacts", "user": "alice"},
        deny("ip_not_allowed", "defaults.ip_lockdown"),
    ),
    # --- reason codes (DESIGN.md §5) -------------------------------------------------------
    Case(
        "reason: a block naming a function is function_blocked, even with users",
        """
        rules:
          - {id: r, action: block, function: billing, users: [pat], countries: [GB]}
        """,
        {"ip": OFFICE, "path": "/billing/1", "user": "pat"},
        deny("function_blocked", "r"),
    ),
    Case(
        "reason: a block naming groups (no function) is user_blocked",
        """
        rules:
          - {id: r, action: block, groups: [project-managers], networks: [193.167.2.0/24]}
        """,
        {"ip": OFFICE, "path": "/contacts", "user": "pat"},
        deny("user_blocked", "r"),
    ),
    Case(
        "reason: a block naming countries (no function, no people) is country_not_allowed",
        """
        rules:
          - {id: r, action: block, countries: [GB], networks: [193.167.0.0/16]}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        deny("country_not_allowed", "r"),
    ),
    Case(
        "reason: a block naming only networks is ip_not_allowed",
        """
        rules:
          - {id: r, action: block, networks: [193.167.0.0/16], channel: web}
        """,
        {"ip": OFFICE, "path": "/contacts"},
        deny("ip_not_allowed", "r"),
    ),
    # --- functions of a request ------------------------------------------------------------
    Case(
        "functions: a path in two functions is subject to the rules of either",
        """
        rules:
          - {id: contacts-ok, action: allow, function: contacts}
          - {id: no-export, action: block, function: export, priority: 1}
        """,
        {"ip": OFFICE, "path": "/contacts/export"},
        deny("function_blocked", "no-export"),
    ),
    Case(
        "functions: methods restrict a function (GET on the clock-in path is not clock-in)",
        """
        rules:
          - {id: no-clock-in, action: block, function: clock-in}
        """,
        {"ip": OFFICE, "path": "/timeclock/clock-in", "method": "GET"},
        allow("default_action"),
    ),
    Case(
        "functions: a function bound to GET is HEAD's too (back ends run the GET handler for HEAD)",
        """
        functions:
          csv: {paths: ['/reports/csv'], methods: [GET]}
        rules:
          - {id: no-csv, action: block, function: csv}
        """,
        {"ip": OFFICE, "path": "/reports/csv", "method": "HEAD"},
        deny("function_blocked", "no-csv"),
    ),
    Case(
        "functions: a trailing slash does not take a request out of its function",
        """
        rules:
          - {id: no-clock-in, action: block, function: clock-in}
        """,
        {"ip": OFFICE, "path": "/timeclock/clock-in/", "method": "POST"},
        deny("function_blocked", "no-clock-in"),
    ),
    Case(
        "functions: with paths.case_insensitive, patterns are folded like the request's match form",
        """
        rules:
          - {id: no-billing, action: block, function: billing}
        """,
        {"ip": OFFICE, "path": "/invoices/17"},
        deny("function_blocked", "no-billing"),
        main="paths: {case_insensitive: true}\n",
        extra={"lab": LAB.replace("'/invoices/**'", "'/Invoices/**'")},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.desc for case in CASES])
def test_rule_decision(case: Case, make_policy: PolicyMaker) -> None:
    lab = case.extra.get("lab", LAB)
    policy = make_policy(case.policy, main=case.main, extra_files={"lab.yaml": lab})
    decision = policy.decide(make_facts(**case.request))
    assert (decision.action, decision.enforced, decision.reason, decision.rule_id) == case.expect
    # explain must never change the verdict
    explained = policy.decide(make_facts(**case.request), explain=True)
    assert (explained.action, explained.enforced, explained.reason, explained.rule_id) == case.expect


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("193.167.2.10", 128),
        ("193.167.2.11", 120),
        ("193.167.9.9", 112),
        ("2001:db8:10:1::5", 64),
        ("2001:db8:10:2::5", 48),
    ],
    ids=[
        "IPv4 single address counts /128",
        "IPv4 /24 counts /120",
        "IPv4 /16 counts /112",
        "IPv6 /64 counts as itself",
        "IPv6 /48 counts as itself",
    ],
)
def test_network_specificity_is_counted_in_ipv6_terms(make_policy: PolicyMaker, ip: str, network: int) -> None:
    policy = make_policy(
        """
        rules:
          - {id: nets, action: allow, networks: [193.167.0.0/16, 193.167.2.0/24, 193.167.2.10,
                                               '2001:db8:10::/48', '2001:db8:10:1::/64']}
        """,
        extra_files={"lab.yaml": LAB},
    )
    decision = policy.decide(make_facts(ip, "/contacts"), explain=True)
    entry = next(e for e in decision.trace if e.rule_id == "nets")
    assert entry.deciding
    assert entry.specificity == (0, 0, 0, network, 0, 0, 0)


def test_ragged_range_specificity_is_the_block_holding_the_address(make_policy: PolicyMaker) -> None:
    policy = make_policy(
        "rules:\n  - {id: ragged, action: allow, networks: ['81.2.69.130-81.2.69.150']}\n",
        extra_files={"lab.yaml": LAB},
    )
    by_address = {}
    for address in ("81.2.69.130", "81.2.69.142", "81.2.69.150"):
        trace = policy.decide(make_facts(address, "/contacts"), explain=True).trace
        by_address[address] = next(e for e in trace if e.rule_id == "ragged").specificity[3]
    # 130-131 is a /31, 136-143 a /29, 150 a /32
    assert by_address == {"81.2.69.130": 96 + 31, "81.2.69.142": 96 + 29, "81.2.69.150": 128}


def test_expiry_is_judged_at_decision_time_without_a_reload(make_policy: PolicyMaker) -> None:
    """The same compiled policy answers differently before and after the expiry instant."""
    policy = make_policy(
        "rules:\n  - {id: ban, action: block, expires: '2026-11-23T12:00:00+00:00'}\n",
        extra_files={"lab.yaml": LAB},
    )
    before = policy.decide(make_facts(HOME, at=at("2026-11-23T11:59:59+00:00")))
    after = policy.decide(make_facts(HOME, at=at("2026-11-23T12:00:00+00:00")))
    assert (before.action, after.action) == ("deny", "allow")


def test_alice_exemption_ends_by_itself_at_the_end_of_its_day(example: Policy) -> None:
    """people.yaml: expires 2026-12-31, read in the office zone (Europe/London, GMT in winter)."""
    last_minute = example.decide(make_facts(FRANCE, "/contacts", user="alice", at=at("2026-12-31T23:59:00+00:00")))
    next_day = example.decide(make_facts(FRANCE, "/contacts", user="alice", at=at("2027-01-01T00:00:00+00:00")))
    assert (last_minute.action, last_minute.rule_id) == ("allow", "users.alice.overrides[0]")
    assert (next_day.action, next_day.reason) == ("deny", "ip_not_allowed")
    assert next_day.settings.overrides == ("Covers the Saturday shift",)


def test_settings_for_a_user_follow_active_overrides(example: Policy) -> None:
    settings = example.settings_for("alice", MONDAY)
    assert settings.ip_lockdown is False
    assert settings.timezone == "Australia/Sydney"
    assert settings.login_hours is not None and settings.login_hours.describe() == "mon-sat 06:00-22:00"
    assert settings.require_2fa is True
    assert settings.overrides == ("Travels to client sites, IP changes daily", "Covers the Saturday shift")
    jim = example.settings_for("jim", MONDAY)
    assert (jim.ip_lockdown, jim.mobile_any_ip, jim.timezone, jim.overrides) == (True, True, "Europe/London", ())
    assert [str(n) for n in jim.allowed_networks] == ["193.167.1.70/32", "193.167.2.0/24", "2001:db8:10::/48"]
    assert example.settings_for(None, MONDAY) == example.settings_for("somebody-else", MONDAY)


def test_warehouse_address_is_reported_with_its_country(example: Policy) -> None:
    assert example.decide(make_facts(WAREHOUSE, "/")).country == "GB"
    assert example.decide(make_facts(PRIVATE, "/")).country is None


def test_people_lookups(example: Policy) -> None:
    assert example.users == ("alice", "bob", "jim", "pat")
    assert example.known_user("jim")  # only a group lists him
    assert example.known_user(" ALICE ")
    assert not example.known_user("maria")
    assert example.groups_of("alice") == frozenset({"sales"})
    assert example.groups_of("Jim") == frozenset({"warehouse"})


def test_an_empty_policy_allows_everything_by_default(make_policy: PolicyMaker) -> None:
    policy = make_policy("", geoip=False)
    decision = policy.decide(make_facts(HOME, "/billing/1", user="jim"))
    assert (decision.action, decision.rule_id, decision.country) == ("allow", "default_action", None)
    assert policy.rule_count == 0
    assert policy.warnings(MONDAY) == []
    assert policy.settings_for("jim", MONDAY).timezone == "UTC"


def test_rule_count_includes_compiled_defaults_and_overrides(example: Policy) -> None:
    # 3 from defaults (lock-down block, allowed_networks, mobile_any_ip) + alice's exemption + 5 rules
    assert example.rule_count == 9


def test_an_ipv4_mapped_ipv6_client_is_judged_as_ipv4(example: Policy) -> None:
    """The gateway maps them before asking (§3.1); the engine does not rely on it."""
    mapped = example.decide(make_facts("::ffff:193.167.2.10", "/contacts", user="jim"), explain=True)
    assert (mapped.action, mapped.rule_id, mapped.country) == ("allow", "defaults.allowed_networks", "GB")
    assert [e.rule_id for e in mapped.trace if e.deciding] == ["defaults.allowed_networks"]
