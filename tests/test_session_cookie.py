"""Reading the gateway's session cookie without aiohttp's full parser, and never differently from it."""

from __future__ import annotations

import hashlib
import time
import uuid

import pytest
from aiohttp._cookie_helpers import parse_cookie_header
from hypothesis import given
from hypothesis import strategies as st

from gateway import sessions
from gateway.cookies import UnreadableCookie, _crm_cookies_in, crm_cookies, own_cookie, sets_cookie
from gateway.sessions import _Unsure, cookie_value

NAME = "crmgw_session"


def full_parser(header: str) -> str | None:
    """What aiohttp's request.cookies would give for NAME (the last copy wins in its dict)."""
    return {name: morsel.value for name, morsel in parse_cookie_header(header)}.get(NAME)


@pytest.mark.parametrize(("header", "expected"), [
    ("", None),
    ("theme=dark", None),
    (f"{NAME}=abc", "abc"),
    (f'{NAME}="gAAAAB-x_y=="', "gAAAAB-x_y=="),
    (f"theme=dark; {NAME}=abc; lang=en", "abc"),
    (f"{NAME}=first; {NAME}=second", "second"),
    (f"{NAME}=", ""),
    (f"{NAME}", ""),
    (f"x{NAME}=abc; {NAME}x=def", None),
    (f"  {NAME}  =  abc  ", "abc"),
])
def test_reads_what_the_full_parser_reads(header: str, expected: str | None) -> None:
    assert full_parser(header) == expected
    try:
        assert cookie_value(header, NAME) == expected
    except _Unsure:
        assert header in ("", NAME) or " =" in header  # not plain pairs: read by the full parser


def test_what_browsers_send_is_read_on_the_fast_path() -> None:
    header = f'theme=dark; {NAME}="gAAAAABn-x_Y0=="; csrftoken=a1b2; crm_session=0123abcd'
    assert cookie_value(header, NAME) == "gAAAAABn-x_Y0=="


@pytest.mark.parametrize("header", [
    f'a="x; {NAME}=EVIL"',  # a quoted value holding a ';' and a fake copy of the cookie
    f'{NAME}="a\\"b"',  # an escaped quote
    f'{NAME}="abc',  # an unclosed quote
    f"{NAME}\ta",  # whitespace inside a name
    f"{NAME}=a b",
    f'{NAME}=a"b',
    f'"{NAME}"=abc',
    f"{NAME}=\\101bc",
])
def test_quoting_it_cannot_read_goes_to_the_full_parser(header: str) -> None:
    with pytest.raises(_Unsure):
        cookie_value(header, NAME)


def test_a_fake_cookie_inside_another_quoted_value_is_not_read_as_the_session() -> None:
    header = f'a="x; {NAME}=EVIL"'
    assert full_parser(header) is None  # what load_cookie answers: the fast path declined


_PIECES = st.lists(st.sampled_from([*'ab=;" \\,\t\x00é', NAME, f"{NAME}=", "gAAAA==", "; "]), max_size=24)


@given(_PIECES.map("".join))
def test_never_disagrees_with_the_full_parser(header: str) -> None:
    try:
        fast = cookie_value(header, NAME)
    except _Unsure:
        return
    assert fast == full_parser(header)


@pytest.mark.parametrize("header", [
    "a=b" + " " * 16000 + "x",  # spaces the separator and the end could both take: 1 s before
    "a=b" + "\t" * 8000 + ";" + " " * 8000 + "x",
    "; ".join(f"k{i}=v" for i in range(2000)) + " \x00",
    'a="' + "b" * 16000,
])
def test_a_16_kib_cookie_header_is_refused_at_once(header: str) -> None:
    """A denial-of-service guard, not a speed target: the plain-header check must not backtrack."""
    started = time.process_time()
    for _ in range(20):
        with pytest.raises(_Unsure):
            cookie_value(header, NAME)
    assert time.process_time() - started < 0.5


def test_long_crm_cookies_are_fingerprinted_but_not_kept() -> None:
    """The client chooses the CRM cookie it sends: a long one is hashed, not held in the cache."""
    short, long = "s" + uuid.uuid4().hex, "l" + uuid.uuid4().hex * 500
    before = sessions.fingerprint.cache_info().currsize
    assert sessions.fingerprint(short) == hashlib.sha256(short.encode()).hexdigest()
    assert sessions.fingerprint(long) == hashlib.sha256(long.encode()).hexdigest()
    assert sessions.fingerprint.cache_info().currsize == before + 1


def test_cookie_headers_are_read_through_a_bounded_cache() -> None:
    """A browser sends one Cookie header again and again: read once; a long one is read every time, not kept."""
    session = "gAAAAAB" + uuid.uuid4().hex
    short = f"theme=dark; {NAME}={session}; crm_session=abc"
    long = f"{NAME}={session}; pad={'x' * 5000}"
    before = (cookie_value.cache_info().currsize, _crm_cookies_in.cache_info().currsize)
    for _ in range(3):
        assert cookie_value(short, NAME) == session
        assert crm_cookies([short], "crm_session") == [("crm_session", "abc")]
        assert cookie_value(long, NAME) == session
        assert crm_cookies([long], "crm_session") == []
    assert (cookie_value.cache_info().currsize, _crm_cookies_in.cache_info().currsize) == (before[0] + 1, before[1] + 1)
    with pytest.raises(UnreadableCookie):  # refused every time, never cached as an answer
        crm_cookies(["theme=dark, crm_session=hidden"], "crm_session")
    with pytest.raises(UnreadableCookie):
        crm_cookies(["theme=dark, crm_session=hidden"], "crm_session")


@pytest.mark.parametrize(("line", "sets"), [
    ("crmgw_session=x; Path=/", True),
    (" crmgw_session =x", True),
    ("CRMGW_SESSION=x", True),  # ASP.NET-style readers ignore the case
    ("crmgw.session=x", True),  # PHP reads '.' as '_'
    ("pref=1 crmgw_session=x; Path=/", True),  # sent back as is: aiohttp's parser reads two cookies
    ("pref=a,crmgw_session=b", True),
    ("=crmgw_session=x", True),  # a nameless cookie is sent as its value alone
    ("crmgw_session", True),
    ("crm_session=x; Path=/", False),
    ("pref=crmgw_session", False),  # a value, not a name, to every reader
    ("crmgw_sessions=x", False),
])
def test_sets_cookie_sees_every_way_a_set_cookie_comes_back_as_the_gateways(line: str, sets: bool) -> None:
    assert sets_cookie(line, "crmgw_session") is sets


def test_own_cookie_is_split_at_semicolons_only_and_refuses_a_hidden_copy() -> None:
    assert own_cookie(['a="x y"; crmgw_session=one', "crmgw_session=two"], "crmgw_session") == "two"
    assert own_cookie(["a=1"], "crmgw_session") is None
    with pytest.raises(UnreadableCookie):
        own_cookie(["crmgw_session=one; pref=1 crmgw_session=two"], "crmgw_session")
