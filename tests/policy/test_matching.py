"""Path patterns, channels, functions, network entries and GeoIP lookups: the matchers under the rules."""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy import GeoIP, GeoIPError, Policy
from gateway.policy.agents import compile_agent
from gateway.policy.networks import parse_entry, v6_prefix
from gateway.policy.patterns import PathMatcher, SegmentGlob, glob_regex, sample_path
from tests.policy.world import BROWSER, MOBILE_APP, PolicyMaker, write_country_db

GLOB_CASES = [
    ("/**/export", "/export", True, "** matches no segment"),
    ("/**/export", "/contacts/export", True, "** matches one segment"),
    ("/**/export", "/a/b/c/export", True, "** matches several segments"),
    ("/**/export", "/exports", False, "no partial segment"),
    ("/**/export", "/export/now", False, "the pattern is anchored at the end"),
    ("/reports/*/csv", "/reports/q3/csv", True, "* is one segment"),
    ("/reports/*/csv", "/reports/csv", False, "* is not zero segments"),
    ("/reports/*/csv", "/reports/a/b/csv", False, "* is not two segments"),
    ("/billing/**", "/billing", True, "trailing ** matches the folder itself"),
    ("/billing/**", "/billing/2026/11", True, "trailing ** matches anything below"),
    ("/billing/**", "/billingx", False, "trailing ** does not match a longer name"),
    ("/timeclock/clock-in", "/timeclock/clock-in/", True, "a trailing slash is ignored"),
    ("/favicon.ico", "/faviconxico", False, "dots are literal"),
    ("/files/*.csv", "/files/q3.csv", True, "* inside a segment"),
    ("/files/*.csv", "/files/a/q3.csv", False, "* inside a segment stays in the segment"),
    ("/**", "/", True, "/** matches the root"),
    ("/a+b/(x)", "/a+b/(x)", True, "regex metacharacters are literal"),
]


@pytest.mark.parametrize(
    ("pattern", "path", "matches"), [c[:3] for c in GLOB_CASES], ids=[c[3] for c in GLOB_CASES]
)
def test_path_pattern(pattern: str, path: str, matches: bool) -> None:
    assert bool(PathMatcher([(0, pattern)], lower=False).owners(path)) is matches


def test_path_patterns_are_folded_when_paths_are_case_insensitive() -> None:
    matcher = PathMatcher([(0, "/Billing/**"), (1, "/Export")], lower=True)
    assert matcher.owners("/billing/x") == {0}
    assert matcher.owners("/export") == {1}
    assert PathMatcher([(0, "/Billing/**")], lower=False).owners("/billing/x") == set()


@pytest.mark.parametrize(
    ("pattern", "sample"),
    [("/**/export", "/export"), ("/reports/*/csv", "/reports/x/csv"), ("/billing/**", "/billing")],
    ids=["leading **", "one *", "trailing **"],
)
def test_sample_path_is_matched_by_its_pattern(pattern: str, sample: str) -> None:
    assert sample_path(pattern) == sample
    assert PathMatcher([(0, pattern)], lower=False).owners(sample) == {0}


_PATTERN_SEGMENTS = ["**", "*", "a", "b", "ab", "a*", "*b", "a*b", "*a*", "a*b*a", "**"]
_PATH_SEGMENTS = ["a", "b", "ab", "ba", "aab", "abba", "bab", ""]


@settings(max_examples=3000)
@given(st.lists(st.sampled_from(_PATTERN_SEGMENTS), min_size=1, max_size=5),
       st.lists(st.sampled_from(_PATH_SEGMENTS), max_size=7))
def test_segment_by_segment_matching_is_the_regex(pattern_segments: list[str], path_segments: list[str]) -> None:
    """Globs too costly for the regex engine are matched by SegmentGlob: the same answer for every path."""
    pattern = "/" + "/".join(pattern_segments)
    path = "/" + "/".join(path_segments)
    assert SegmentGlob(pattern).fullmatch(path) is bool(re.fullmatch(glob_regex(pattern), path)), (pattern, path)


@pytest.mark.parametrize(("pattern", "path"), [
    ("/**/**/z", "/a" * 8000),
    ("/**/x/**/y", "/x/y" * 4000 + "/q"),
    ("/**/x/**/y/**/z", "/x/y" * 300),  # cubic for the regex engine: kept small enough to fail, not hang
    ("/a*b*c*d", "/" + "ab" * 8000),
    ("/**/a*b*c/**", "/" + "/".join(["ab" * 20] * 700)),
])
def test_a_long_path_against_a_many_wildcard_glob_is_answered_at_once(pattern: str, path: str) -> None:
    """A denial-of-service guard, not a speed target: backtracking took 0.08-1.6 s (cubic patterns:
    hours) for one such request of at most 16 KiB; matched segment by segment it is milliseconds."""
    matcher = PathMatcher([(0, pattern), (1, "/**/export")], lower=False)
    started = time.process_time()
    assert matcher.owners(path) == set()
    assert matcher.owners(path + "/export") == {1}
    assert time.process_time() - started < 0.5


@pytest.mark.parametrize("pattern", [r"(a+)+b", r"(a|a)+b", r"(.*a){12}b"])
def test_a_catastrophic_user_agent_pattern_is_answered_at_once(make_policy: PolicyMaker, pattern: str) -> None:
    """A denial-of-service guard, not a speed target: with Python's backtracking re each of these
    takes 1.5-5 s on a User-Agent of 26 'a's and doubles with every one more (16 KiB: forever);
    RE2 is linear in the header."""
    policy = make_policy(f"channels:\n  mobile: {{user_agents: ['{pattern}']}}\n")
    started = time.process_time()
    assert policy.channel_of("a" * 26, "/") == "web"  # kept short enough for the old engine to fail, not hang
    assert time.process_time() - started < 0.5
    assert policy.channel_of("a" * 16_000 + "!", "/") == "web"  # the longest header a client may send
    assert policy.channel_of("a" * 30 + "b", "/") == "mobile"
    assert time.process_time() - started < 0.5


_ORDINARY_AGENTS = [
    "^AcmeCRM-Mobile/", r"CRMApp/\d+", "Android|iPhone", r"^Mozilla/5\.0 \(Linux", "kiosk$", "[A-Z]{3}-App/[0-9.]+",
    r"\bTablet\b", "^$",
]


@settings(max_examples=300, deadline=None)
@given(
    pattern=st.sampled_from(_ORDINARY_AGENTS),
    agent=st.lists(st.sampled_from(["AcmeCRM-Mobile/", "acmecrm-mobile/4.2", "CRMApp/", "7", "Android", "iPhone",
                                    "Mozilla/5.0 (Linux", " ", "kiosk", "ABC-App/1.2", "Tablet", "xTablet", "_", "/",
                                    "\t", "(", ";"]), max_size=6).map("".join),
)
def test_user_agent_patterns_mean_what_they_mean_in_python(pattern: str, agent: str) -> None:
    """RE2 instead of re changes nothing for the patterns channels are written with (case-insensitive search).

    User-Agents are ASCII: RE2's ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII-only where Python's are
    Unicode (``\\bTablet\\b`` finds ``Tableté`` in RE2, not in re; docs/admin-guide.md says so). And
    Python's ``$`` also matches before a final newline, which a header value cannot hold."""
    expected = bool(re.search(pattern, agent, re.IGNORECASE))
    assert bool(compile_agent(pattern).search(agent)) is expected, (pattern, agent)


CHANNEL_CASES = [
    (MOBILE_APP, "/api/mobile/jobs/7", "mobile", "app User-Agent on an app path"),
    ("acmecrm-mobile/5.0", "/api/mobile/jobs", "mobile", "User-Agent regexes are case-insensitive"),
    ("Dalvik/2.1 CRMApp/17", "/api/mobile/jobs", "mobile", "regexes are searched, not anchored"),
    ("Dalvik/2.1 CRMApp/beta", "/api/mobile/jobs", "web", "CRMApp/ needs a number"),
    (MOBILE_APP, "/contacts", "web", "app User-Agent outside the channel's paths"),
    (BROWSER, "/api/mobile/jobs", "web", "a browser on an app path"),
    ("", "/api/mobile/jobs", "web", "no User-Agent at all"),
]


@pytest.mark.parametrize(
    ("user_agent", "path", "channel"), [c[:3] for c in CHANNEL_CASES], ids=[c[3] for c in CHANNEL_CASES]
)
def test_channel_of(example: Policy, user_agent: str, path: str, channel: str) -> None:
    assert example.channel_of(user_agent, path) == channel


def test_the_first_matching_channel_wins(make_policy: PolicyMaker) -> None:
    policy = make_policy(
        """
        channels:
          kiosk: {paths: ['/kiosk/**']}
          tablet: {user_agents: ['Tablet'], paths: ['/kiosk/**', '/t/**']}
        """
    )
    assert policy.channel_of("Tablet", "/kiosk/a") == "kiosk"
    assert policy.channel_of("Tablet", "/t/a") == "tablet"
    assert policy.channel_of("Tablet", "/other") == "web"


FUNCTION_CASES = [
    ("POST", "/timeclock/clock-in", ("clock-in",), "method and path"),
    ("GET", "/timeclock/clock-in", (), "the wrong method"),
    ("GET", "/contacts/export", ("export",), "a glob"),
    ("GET", "/billing/export", ("export", "billing"), "two functions, in file order"),
    ("GET", "/static/app.css", ("static",), "a public function"),
    ("GET", "/contacts/1", (), "no function"),
]


@pytest.mark.parametrize(
    ("method", "path", "functions"), [c[:3] for c in FUNCTION_CASES], ids=[c[3] for c in FUNCTION_CASES]
)
def test_functions_of(example: Policy, method: str, path: str, functions: tuple[str, ...]) -> None:
    assert example.functions_of(method, path) == functions


ENTRY_CASES = [
    ("193.167.1.70", ["193.167.1.70/32"], "a single IPv4 address"),
    ("193.167.2.0/24", ["193.167.2.0/24"], "a CIDR"),
    ("193.167.2.9/24", ["193.167.2.0/24"], "host bits are dropped"),
    ("2001:db8:10::/48", ["2001:db8:10::/48"], "an IPv6 CIDR"),
    ("::ffff:10.0.0.0/104", ["10.0.0.0/8"], "IPv4-mapped IPv6 becomes IPv4"),
    ("10.0.0.0-10.0.0.255", ["10.0.0.0/24"], "a range that is one CIDR"),
    ("10.0.0.5-10.0.0.9", ["10.0.0.5/32", "10.0.0.6/31", "10.0.0.8/31"], "a ragged range"),
    ("2001:db8::-2001:db8::3", ["2001:db8::/126"], "an IPv6 range"),
]


@pytest.mark.parametrize(("text", "blocks"), [c[:2] for c in ENTRY_CASES], ids=[c[2] for c in ENTRY_CASES])
def test_network_entry_blocks(text: str, blocks: list[str]) -> None:
    assert [str(b) for b in parse_entry(text).blocks] == blocks


@pytest.mark.parametrize(
    ("network", "prefix"),
    [("10.0.0.0/8", 104), ("10.0.0.1/32", 128), ("0.0.0.0/0", 96), ("2001:db8::/32", 32), ("::/0", 0)],
    ids=["IPv4 /8", "IPv4 address", "IPv4 any", "IPv6 /32", "IPv6 any"],
)
def test_v6_prefix(network: str, prefix: int) -> None:
    assert v6_prefix(ipaddress.ip_network(network)) == prefix


# --- GeoIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True], ids=["MaxMind country.iso_code schema", "flat country_code schema"])
def test_geoip_reads_both_schemas(tmp_path: Path, flat: bool) -> None:
    path = write_country_db(tmp_path / "c.mmdb", {"5.135.0.0/16": "fr", "2001:db8:99::/48": "DE"}, flat=flat)
    geoip = GeoIP(path)
    assert geoip.country(ipaddress.ip_address("5.135.1.1")) == "FR"
    assert geoip.country(ipaddress.ip_address("2001:db8:99::7")) == "DE"
    assert geoip.country(ipaddress.ip_address("10.0.0.1")) is None
    assert geoip.country(ipaddress.ip_address("2001:db8:aa::1")) is None


def test_geoip_falls_back_to_registered_country(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Test")
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"registered_country": {"iso_code": "NL"}})
    writer.to_db_file(str(tmp_path / "r.mmdb"))
    assert GeoIP(tmp_path / "r.mmdb").country(ipaddress.ip_address("198.51.100.9")) == "NL"


def test_geoip_with_an_ipv4_only_database_knows_no_ipv6(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="Test")
    writer.insert_network(IPSet(["5.135.0.0/16"]), {"country_code": "FR"})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    geoip = GeoIP(tmp_path / "v4.mmdb")
    assert geoip.country(ipaddress.ip_address("5.135.0.1")) == "FR"
    assert geoip.country(ipaddress.ip_address("2001:db8::1")) is None


@pytest.mark.parametrize("content", [None, b"not a database"], ids=["missing file", "not a MaxMind DB"])
def test_geoip_refuses_a_bad_database(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.mmdb"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GeoIPError, match="cannot open GeoIP database"):
        GeoIP(path)


def test_long_paths_and_user_agents_are_judged_without_the_caches(example: Policy) -> None:
    """Client-controlled keys over 1 KB bypass the caches (memory bound) but are judged the same."""
    long_path = "/billing/" + "a" * 3000
    long_agent = "AcmeCRM-Mobile/4.2 " + "x" * 3000
    assert example.functions_of("GET", long_path) == ("billing",)
    assert example.channel_of(long_agent, "/api/mobile/jobs") == "mobile"
    assert example.channel_of(long_agent, long_path) == "web"
