"""Login hours (DESIGN.md §3.4): per-user zones, weekday sets, windows past midnight, DST days."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from gateway.policy import LoginHours, Policy
from gateway.policy.loader import parse_days, parse_time
from gateway.policy.model import describe_days
from tests.policy.world import HOME, OFFICE, SYDNEY, PolicyMaker, make_facts

MON_FRI = frozenset(range(5))
MON_SAT = frozenset(range(6))
EVERY_DAY = frozenset(range(7))
LONDON = ZoneInfo("Europe/London")
SYDNEY_TZ = ZoneInfo("Australia/Sydney")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def window(days: frozenset[int], start: str, end: str) -> LoginHours:
    return LoginHours(None, days, time.fromisoformat(start), time.fromisoformat(end))


HOURS_CASES = [
    # (description, hours, zone, instant (UTC), inside?)
    ("office hours: Monday 06:59 London is before the window", window(MON_FRI, "07:00", "19:00"), LONDON,
     "2026-11-23T06:59:00", False),
    ("office hours: Monday 07:00 London is inside (from is inclusive)", window(MON_FRI, "07:00", "19:00"), LONDON,
     "2026-11-23T07:00:00", True),
    ("office hours: Monday 18:59 London is inside", window(MON_FRI, "07:00", "19:00"), LONDON,
     "2026-11-23T18:59:59", True),
    ("office hours: Monday 19:00 London is outside (to is exclusive)", window(MON_FRI, "07:00", "19:00"), LONDON,
     "2026-11-23T19:00:00", False),
    ("mon-fri: Saturday noon is outside", window(MON_FRI, "07:00", "19:00"), LONDON,
     "2026-11-28T12:00:00", False),
    ("mon-sat: Saturday noon is inside", window(MON_SAT, "07:00", "19:00"), LONDON,
     "2026-11-28T12:00:00", True),
    ("mon-sat: Sunday noon is outside", window(MON_SAT, "07:00", "19:00"), LONDON,
     "2026-11-29T12:00:00", False),
    ("night shift 22:00-06:00 mon-fri: Friday 23:00 is inside", window(MON_FRI, "22:00", "06:00"), LONDON,
     "2026-11-27T23:00:00", True),
    ("night shift: Saturday 03:00 belongs to Friday's shift", window(MON_FRI, "22:00", "06:00"), LONDON,
     "2026-11-28T03:00:00", True),
    ("night shift: Saturday 23:00 starts no shift", window(MON_FRI, "22:00", "06:00"), LONDON,
     "2026-11-28T23:00:00", False),
    ("night shift: Monday 03:00 would belong to Sunday's shift, which does not exist",
     window(MON_FRI, "22:00", "06:00"), LONDON, "2026-11-23T03:00:00", False),
    ("night shift: Tuesday 05:59 belongs to Monday's shift", window(MON_FRI, "22:00", "06:00"), LONDON,
     "2026-11-24T05:59:00", True),
    ("night shift: Tuesday 06:00 has ended", window(MON_FRI, "22:00", "06:00"), LONDON,
     "2026-11-24T06:00:00", False),
    ("night shift: noon is outside", window(MON_FRI, "22:00", "06:00"), LONDON,
     "2026-11-24T12:00:00", False),
    ("until midnight: 18:00-00:00 includes 23:59", window(EVERY_DAY, "18:00", "00:00"), LONDON,
     "2026-11-24T23:59:00", True),
    # Europe/London, clocks go forward 2026-03-29 01:00 UTC (a Sunday)
    ("London DST start: Saturday 06:30 UTC is 06:30 GMT, before 07:00", window(EVERY_DAY, "07:00", "19:00"), LONDON,
     "2026-03-28T06:30:00", False),
    ("London DST start: Sunday 06:30 UTC is 07:30 BST, inside", window(EVERY_DAY, "07:00", "19:00"), LONDON,
     "2026-03-29T06:30:00", True),
    ("London DST start: Sunday 18:30 UTC is 19:30 BST, outside", window(EVERY_DAY, "07:00", "19:00"), LONDON,
     "2026-03-29T18:30:00", False),
    ("London DST start night: 04:30 UTC is 05:30 BST, still in a 22:00-06:00 shift",
     window(EVERY_DAY, "22:00", "06:00"), LONDON, "2026-03-29T04:30:00", True),
    ("London DST start night: 05:30 UTC is 06:30 BST, the shift has ended", window(EVERY_DAY, "22:00", "06:00"),
     LONDON, "2026-03-29T05:30:00", False),
    # Europe/London, clocks go back 2026-10-25 01:00 UTC (a Sunday)
    ("London DST end: Saturday 06:30 UTC is 07:30 BST, inside", window(EVERY_DAY, "07:00", "19:00"), LONDON,
     "2026-10-24T06:30:00", True),
    ("London DST end: Sunday 06:30 UTC is 06:30 GMT, before 07:00", window(EVERY_DAY, "07:00", "19:00"), LONDON,
     "2026-10-25T06:30:00", False),
    ("London DST end: Sunday 18:30 UTC is 18:30 GMT, inside", window(EVERY_DAY, "07:00", "19:00"), LONDON,
     "2026-10-25T18:30:00", True),
    # Australia/Sydney, clocks go back 2026-04-05 03:00 AEDT (16:00 UTC on the 4th)
    ("Sydney DST end: 20:30 UTC on Apr 3 is 07:30 AEDT on Apr 4, inside", window(EVERY_DAY, "07:00", "19:00"),
     SYDNEY_TZ, "2026-04-03T20:30:00", True),
    ("Sydney DST end: 20:30 UTC on Apr 4 is 06:30 AEST on the change day, outside",
     window(EVERY_DAY, "07:00", "19:00"), SYDNEY_TZ, "2026-04-04T20:30:00", False),
    # Australia/Sydney, clocks go forward 2026-10-04 02:00 AEST (16:00 UTC on the 3rd)
    ("Sydney DST start: 20:30 UTC on Oct 2 is 06:30 AEST on Oct 3, outside", window(EVERY_DAY, "07:00", "19:00"),
     SYDNEY_TZ, "2026-10-02T20:30:00", False),
    ("Sydney DST start: 20:30 UTC on Oct 3 is 07:30 AEDT on the change day, inside",
     window(EVERY_DAY, "07:00", "19:00"), SYDNEY_TZ, "2026-10-03T20:30:00", True),
    ("Sydney: the same instant is Monday evening in Sydney and Monday morning in London",
     window(MON_FRI, "07:00", "19:00"), SYDNEY_TZ, "2026-11-23T10:00:00", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("hours", "zone", "instant", "inside"),
    [case[1:] for case in HOURS_CASES],
    ids=[case[0] for case in HOURS_CASES],
)
def test_login_hours_window(hours: LoginHours, zone: ZoneInfo, instant: str, inside: bool) -> None:
    assert hours.contains(utc(instant), zone) is inside


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("mon,wed,sat", {0, 2, 5}),
        ("sat-mon", {5, 6, 0}),
        ("sun", {6}),
        ("Monday-Wednesday", {0, 1, 2}),
        (["mon-tue", "fri"], {0, 1, 4}),
        ("mon-fri, sun", {0, 1, 2, 3, 4, 6}),
    ],
    ids=["a range", "a list", "a range wrapping the week", "one day", "full names", "a YAML list", "mixed"],
)
def test_days_parse(text: object, days: set[int]) -> None:
    assert parse_days(text) == frozenset(days)


@pytest.mark.parametrize(
    ("days", "text"),
    [({0, 1, 2, 3, 4}, "mon-fri"), ({5, 6, 0}, "sat-mon"), ({0, 2, 5}, "mon,wed,sat"), (set(range(7)), "mon-sun")],
    ids=["a range", "a wrapping range", "a list", "every day"],
)
def test_days_describe(days: set[int], text: str) -> None:
    assert describe_days(frozenset(days)) == text


def test_times_must_be_quoted_hh_mm() -> None:
    assert parse_time("07:30") == time(7, 30)
    with pytest.raises(ValueError, match="in quotes"):
        parse_time(1140)  # what YAML makes of an unquoted 19:00


# --- login hours in decisions ---------------------------------------------------------------

DECISION_CASES = [
    # (description, ip, user, instant UTC, expected (action, reason, rule_id))
    ("jim (London, mon-fri 07-19) on Monday 10:00 GMT", OFFICE, "jim", "2026-11-23T10:00:00",
     ("allow", None, "defaults.allowed_networks")),
    ("jim on Monday 06:59 GMT: outside his hours", OFFICE, "jim", "2026-11-23T06:59:00",
     ("deny", "outside_login_hours", "defaults.login_hours")),
    ("jim on Saturday noon: mon-fri", OFFICE, "jim", "2026-11-28T12:00:00",
     ("deny", "outside_login_hours", "defaults.login_hours")),
    ("alice (Sydney, mon-sat 06-22) at 21:00 Sydney on Monday", OFFICE, "alice", "2026-11-23T10:00:00",
     ("allow", None, "users.alice.overrides[0]")),
    ("alice at 22:30 Sydney on Monday: after her window", OFFICE, "alice", "2026-11-23T11:30:00",
     ("deny", "outside_login_hours", "users.alice.overrides[1].login_hours")),
    ("alice on Saturday 10:00 Sydney: her override covers Saturdays (Friday 23:00 UTC)", SYDNEY, "alice",
     "2026-11-27T23:00:00", ("allow", None, "users.alice.overrides[0]")),
    ("alice on Sunday 10:00 Sydney: not covered", SYDNEY, "alice", "2026-11-28T23:00:00",
     ("deny", "outside_login_hours", "users.alice.overrides[1].login_hours")),
    ("alice at 05:30 Sydney on Monday (Sunday 18:30 UTC): before 06:00", SYDNEY, "alice", "2026-11-29T18:30:00",
     ("deny", "outside_login_hours", "users.alice.overrides[1].login_hours")),
    ("anonymous on Saturday: no identity, no login hours", OFFICE, None, "2026-11-28T12:00:00",
     ("allow", None, "defaults.allowed_networks")),
    ("a user the policy does not name follows the office's hours", OFFICE, "maria", "2026-11-28T12:00:00",
     ("deny", "outside_login_hours", "defaults.login_hours")),
    ("a rule's deny keeps its own reason outside hours (jim at home on Saturday)", HOME, "jim",
     "2026-11-28T12:00:00", ("deny", "ip_not_allowed", "defaults.ip_lockdown")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("ip", "user", "instant", "expected"),
    [case[1:] for case in DECISION_CASES],
    ids=[case[0] for case in DECISION_CASES],
)
def test_login_hours_in_decisions(
    example: Policy, ip: str, user: str | None, instant: str, expected: tuple[str, str | None, str]
) -> None:
    decision = example.decide(make_facts(ip, "/contacts", user=user, at=utc(instant)))
    assert (decision.action, decision.reason, decision.rule_id) == expected
    if decision.reason == "outside_login_hours":
        assert decision.enforced
        assert decision.rule_title is not None and decision.rule_title.startswith("Login hours ")


def test_outside_login_hours_is_not_enforced_in_report_only_mode(make_policy: PolicyMaker) -> None:
    policy = make_policy(
        """
        defaults:
          login_hours: {timezone: Europe/London, days: mon-fri, from: '07:00', to: '19:00'}
        groups: {warehouse: [jim]}
        """,
        main="mode: report-only\n",
    )
    decision = policy.decide(make_facts(OFFICE, user="jim", at=utc("2026-11-28T12:00:00")))
    assert (decision.action, decision.enforced, decision.reason) == ("deny", False, "outside_login_hours")


ZONE_CASES = [
    # (description, people text, user, expected zone)
    ("a user's own timezone beats the office's", "users: {kim: {timezone: America/New_York}}", "kim",
     "America/New_York"),
    ("without one, the office's (the defaults' login_hours zone)", "groups: {night: [kim]}", "kim", "Europe/London"),
    ("an override's login_hours with its own zone beats the user's timezone",
     """
     users:
       kim:
         timezone: America/New_York
         overrides:
           - {login_hours: {timezone: Asia/Tokyo, from: '09:00', to: '17:00'}, reason: Tokyo desk}
     """, "kim", "Asia/Tokyo"),
    ("an override's login_hours without a zone use the user's timezone",
     """
     users:
       kim:
         timezone: America/New_York
         overrides:
           - {login_hours: {from: '09:00', to: '17:00'}, reason: Late shift}
     """, "kim", "America/New_York"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("people", "user", "zone"), [case[1:] for case in ZONE_CASES], ids=[case[0] for case in ZONE_CASES]
)
def test_the_zone_login_hours_are_read_in(make_policy: PolicyMaker, people: str, user: str, zone: str) -> None:
    policy = make_policy(
        "defaults:\n  login_hours: {timezone: Europe/London, days: mon-fri, from: '07:00', to: '19:00'}\n",
        extra_files={"people.yaml": people},
    )
    assert policy.settings_for(user, utc("2026-11-23T10:00:00")).timezone == zone


def test_night_shift_user_in_another_zone_decides_by_their_wall_clock(make_policy: PolicyMaker) -> None:
    """kim works 22:00-06:00 mon-fri in New York: Saturday 04:00 there (09:00 UTC) is Friday's shift."""
    policy = make_policy(
        """
        defaults:
          login_hours: {timezone: Europe/London, days: mon-fri, from: '07:00', to: '19:00'}
        users:
          kim:
            timezone: America/New_York
            overrides:
              - {login_hours: {days: mon-fri, from: '22:00', to: '06:00'}, reason: Night shift}
        """
    )
    inside = policy.decide(make_facts(OFFICE, user="kim", at=utc("2026-11-28T09:00:00")))
    outside = policy.decide(make_facts(OFFICE, user="kim", at=utc("2026-11-28T12:00:00")))
    assert (inside.action, outside.reason) == ("allow", "outside_login_hours")
