"""Path canonicalisation (DESIGN.md §3.2): every spelling of a route normalises to one form.

Most cases try to reach the example config's guarded routes (``/billing/**``,
``/contacts/export``, ``/timeclock/clock-in``) by a spelling a naive matcher would miss.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.exchange import Exchange
from gateway.filters import paths as path_filter
from gateway.paths import BadPath, NormalisedPath, normalise_path, split_target


@dataclass(frozen=True)
class Case:
    description: str
    raw: str
    forward: str | None  # None: BadPath
    match: str | None = None  # defaults to forward
    match_ci: str | None = None  # with case_insensitive; defaults to match.lower()


CASES = [
    # --- clean paths (fast path) ---
    Case("root", "/", "/"),
    Case("clean route", "/billing/invoices", "/billing/invoices"),
    Case("trailing slash kept", "/billing/", "/billing/"),
    Case("sub-delims, colon and at sign kept raw", "/a/b!$&'()*+,=:@c", "/a/b!$&'()*+,=:@c"),
    Case("dot inside a name is not a dot segment", "/files/report.v2..csv", "/files/report.v2..csv"),
    Case("dotfile-like segment kept", "/.well-known/security.txt", "/.well-known/security.txt"),
    Case("three dots is an ordinary segment", "/a/.../b", "/a/.../b"),
    # --- encodings of unreserved characters are decoded ---
    Case("%62illing is billing", "/%62illing/x", "/billing/x"),
    Case("lower-case hex of an unreserved char", "/billin%67", "/billing"),
    Case("every char of export encoded", "/contacts/%65%78%70%6F%72%74", "/contacts/export"),
    Case("encoded tilde, dash, dot, underscore decoded", "/%7E%2D%2E%5F", "/~-._"),
    Case("reserved escapes kept, hex upper-cased", "/a%2cb%3a%40", "/a%2Cb%3A%40"),
    Case("encoded percent kept as %25", "/100%25", "/100%25"),
    Case("encoded ; is not a parameter delimiter", "/billing%3Bx/y", "/billing%3Bx/y"),
    Case("encoded '?' stays part of the path", "/a%3fb", "/a%3Fb"),
    Case("valid UTF-8 escapes kept, upper-cased", "/caf%c3%a9", "/caf%C3%A9"),
    # --- dot segments and slashes ---
    Case("/./billing", "/./billing", "/billing"),
    Case("/x/../billing", "/x/../billing", "/billing"),
    Case("//billing", "//billing", "/billing"),
    Case("/billing/. keeps the trailing slash", "/billing/.", "/billing/"),
    Case("/billing/x/.. keeps the trailing slash", "/billing/x/..", "/billing/"),
    Case("'..' above root stays at root", "/../../billing", "/billing"),
    Case("only '..'", "/..", "/"),
    Case("repeated slashes everywhere", "///timeclock////clock-in//", "/timeclock/clock-in/"),
    Case("encoded dots are dot segments", "/x/%2e%2E/billing", "/billing"),
    Case("half-encoded dot-dot", "/x/.%2e/billing", "/billing"),
    Case("dots and slashes combined", "/contacts/./x/..//export", "/contacts/export"),
    Case("'..' after a removed '.'", "/a/./../billing", "/billing"),
    # --- ;params ---
    Case("params kept upstream, ignored for matching", "/billing;jsessionid=1/x", "/billing;jsessionid=1/x",
         "/billing/x"),
    Case("/billing;x=1/ matches /billing/", "/billing;x=1/", "/billing;x=1/", "/billing/"),
    Case("params on several segments", "/a;p=1/b;q=2", "/a;p=1/b;q=2", "/a/b"),
    Case("params on the last segment", "/contacts/export;v=1", "/contacts/export;v=1", "/contacts/export"),
    Case("a params-only segment is empty for matching", "/billing/;x/invoices", "/billing/;x/invoices",
         "/billing/invoices"),
    Case("params-only first segment", "/;x/billing", "/;x/billing", "/billing"),
    Case("params on root (URL-rewritten session id)", "/;jsessionid=AB", "/;jsessionid=AB", "/"),
    Case("params-only last segment is a trailing slash", "/billing/;x", "/billing/;x", "/billing/"),
    Case("'..;' is a dot segment (Tomcat reads it so)", "/x/..;/billing", "/billing"),
    Case("'.;x' is a dot segment", "/billing/.;x/y", "/billing/y"),
    Case("encoded '..' with params", "/x/%2e%2e;a=b/billing", "/billing"),
    # --- case ---
    Case("/BILLING keeps case upstream; folded only when case-insensitive", "/BILLING/X", "/BILLING/X",
         "/BILLING/X", "/billing/x"),
    Case("case folding also after decoding", "/%42ILLING", "/BILLING", "/BILLING", "/billing"),
    Case("params stripped before folding", "/Billing;JSESSIONID=1", "/Billing;JSESSIONID=1", "/Billing",
         "/billing"),
    # --- stray raw characters are encoded ---
    Case("raw pipe encoded like %7C", "/a|b", "/a%7Cb"),
    Case("raw double quote and brackets encoded", '/a"[b]', "/a%22%5Bb%5D"),
    Case("raw non-ASCII encoded as UTF-8", "/café", "/caf%C3%A9"),
    Case("raw emoji encoded as UTF-8", "/\U0001f600", "/%F0%9F%98%80"),
    Case("raw space encoded", "/a b", "/a%20b"),
    # --- refused ---
    Case("must start with a slash", "billing", None),
    Case("empty path", "", None),
    Case("encoded slash %2F", "/billing%2Finvoices", None),
    Case("encoded slash lower-case %2f", "/x/..%2fbilling", None),
    Case("..%2F traversal", "/..%2F..%2Fbilling", None),
    Case("encoded backslash %5C", "/x%5C..%5Cbilling", None),
    Case("raw backslash", "/x\\..\\billing", None),
    Case("raw NUL", "/billing\x00.css", None),
    Case("encoded NUL", "/billing%00.css", None),
    Case("raw CR LF", "/a\r\nSet-Cookie:x", None),
    Case("encoded LF", "/a%0Ab", None),
    Case("encoded DEL", "/a%7F", None),
    Case("raw tab", "/a\tb", None),
    Case("encoded C1 control (NEL)", "/a%C2%85", None),
    Case("lone percent", "/a%", None),
    Case("percent with one hex digit", "/a%4", None),
    Case("percent with non-hex", "/a%G1", None),
    Case("percent followed by slash", "/a%/b", None),
    Case("double-encoded slash %252F", "/x%252F..%252Fbilling", None),
    Case("double-encoded dot %252E", "/x/%252E%252E/billing", None),
    Case("double-encoded backslash", "/a%255Cb", None),
    Case("double-encoded NUL", "/a%2500", None),
    Case("double encoding assembled from escaped digits", "/%25%300", None),
    Case("double encoding assembled from escaped letters", "/x%25%62%63/billing", None),
    Case("double-encoded slash, digits escaped", "/x%25%32%46..%25%32%46billing", None),
    Case("overlong UTF-8 dot %C0%AE", "/x/%C0%AE%C0%AE/billing", None),
    Case("overlong UTF-8 slash %C0%AF", "/x%C0%AFbilling", None),
    Case("Latin-1 byte is not UTF-8", "/caf%E9", None),
    Case("truncated UTF-8 sequence", "/caf%C3", None),
    Case("UTF-8 split by a slash", "/%C3/%A9", None),
    Case("encoded UTF-16 surrogate", "/%ED%A0%80", None),
    Case("lone surrogate from surrogateescape", "/caf\udce9", None),
    Case("raw question mark in a path", "/a?b", None),
    Case("raw hash in a path", "/a#b", None),
    Case("raw C1 control character", "/a\x85b", None),
]


@pytest.mark.parametrize("case", CASES, ids=[case.description for case in CASES])
def test_normalise_path(case: Case) -> None:
    if case.forward is None:
        with pytest.raises(BadPath):
            normalise_path(case.raw)
        with pytest.raises(BadPath):
            normalise_path(case.raw, case_insensitive=True)
        return
    match = case.match if case.match is not None else case.forward
    match_ci = case.match_ci if case.match_ci is not None else match.lower()
    assert normalise_path(case.raw) == NormalisedPath(case.forward, match)
    assert normalise_path(case.raw, case_insensitive=True) == NormalisedPath(case.forward, match_ci)


@pytest.mark.parametrize(
    ("raw", "guarded"),
    [
        ("/%62illing/invoices/7", "/billing/"),
        ("/./billing/invoices/7", "/billing/"),
        ("/x/../billing/invoices/7", "/billing/"),
        ("//billing/invoices/7", "/billing/"),
        ("/billing;x=1/invoices/7", "/billing/"),
        ("/static/..;/billing/invoices/7", "/billing/"),
        ("/contacts/./export", "/contacts/export"),
        ("/contacts/%65xport", "/contacts/export"),
        ("/reports/../contacts//export;csv", "/contacts/export"),
        ("/timeclock/clock-in/.", "/timeclock/clock-in/"),
        ("/timeclock/x/..;/clock-in", "/timeclock/clock-in"),
    ],
    ids=[
        "billing by escape", "billing by dot", "billing by dot-dot", "billing by double slash",
        "billing by params", "billing by Tomcat ..;", "export by dot", "export by escape",
        "export by mixed tricks", "clock-in with trailing dot", "clock-in by ..; in the middle",
    ],
)
def test_guarded_routes_cannot_be_spelled_around(raw: str, guarded: str) -> None:
    """Tricks that reach a guarded route upstream also match it: forward and match agree."""
    result = normalise_path(raw)
    assert result.match.startswith(guarded)
    assert without_params(result.forward) == result.match


def without_params(forward: str) -> str:
    """What the CRM routes on when it ignores ;params: the contract says that is ``match``."""
    path = re.sub(r";[^/]*", "", forward)
    while "//" in path:
        path = path.replace("//", "/")
    return path


def test_fast_path_returns_input_unchanged() -> None:
    raw = "/contacts/42/notes"
    result = normalise_path(raw)
    assert result.forward is raw
    assert result.match is raw


def test_error_message_never_echoes_more_than_100_characters() -> None:
    with pytest.raises(BadPath) as caught:
        normalise_path("/" + "x" * 5000 + "%2F")
    assert "x" * 101 not in str(caught.value)


@dataclass(frozen=True)
class Target:
    description: str
    raw: str
    expected: tuple[str, str] | None  # None: BadPath


TARGETS = [
    Target("origin-form without query", "/billing", ("/billing", "")),
    Target("origin-form with query", "/billing?id=7&x=1", ("/billing", "id=7&x=1")),
    Target("empty query after '?'", "/billing?", ("/billing", "")),
    Target("second '?' belongs to the query", "/a?b?c", ("/a", "b?c")),
    Target("query is not normalised", "/a?%2F=..", ("/a", "%2F=..")),
    Target("absolute-form http", "http://crm.example:8080/billing?id=7", ("/billing", "id=7")),
    Target("absolute-form https, upper-case scheme", "HTTPS://crm.example/a/b", ("/a/b", "")),
    Target("absolute-form with empty path", "http://crm.example", ("/", "")),
    Target("absolute-form with empty path and query", "http://crm.example?x=1", ("/", "x=1")),
    Target("absolute-form with userinfo", "http://u:p@crm.example/a", ("/a", "")),
    Target("asterisk-form", "*", None),
    Target("authority-form (CONNECT)", "crm.example:443", None),
    Target("relative path", "billing/x", None),
    Target("empty target", "", None),
    Target("other scheme", "ftp://crm.example/a", None),
    Target("fragment in origin-form", "/billing#top", None),
    Target("fragment in query", "/billing?x=1#top", None),
    Target("fragment in absolute-form", "http://crm.example/a#b", None),
]


@pytest.mark.parametrize("case", TARGETS, ids=[case.description for case in TARGETS])
def test_split_target(case: Target) -> None:
    if case.expected is None:
        with pytest.raises(BadPath):
            split_target(case.raw)
    else:
        assert split_target(case.raw) == case.expected


def test_split_then_normalise_absolute_form() -> None:
    path, query = split_target("http://crm.example/x/../%62illing;s=1?id=7")
    assert (normalise_path(path), query) == (NormalisedPath("/billing;s=1", "/billing"), "id=7")


async def test_long_paths_are_normalised_but_not_kept() -> None:
    """The path cache holds short paths only: 4,096 distinct 16 KiB paths would pin ~100 MiB."""
    step = path_filter.PathFilter(case_insensitive=False)
    peer = ipaddress.ip_address("127.0.0.1")
    for target in (f"/short/{uuid.uuid4().hex}", f"/long/{uuid.uuid4().hex}" + "x" * 4000):
        ex = Exchange(request=make_mocked_request("GET", target), request_id="r", peer_ip=peer, client_ip=peer)
        before = path_filter._normalise.cache_info().currsize
        assert await step(ex) is None
        assert ex.path is not None and ex.path.forward == target
        kept = path_filter._normalise.cache_info().currsize - before
        assert kept == (1 if len(target) <= path_filter._normalise.longest else 0)
