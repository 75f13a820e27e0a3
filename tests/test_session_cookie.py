"""Reading the gateway's session cookie as browsers name cookies: a fast path for plain lines, and
:func:`gateway.cookies.own_cookie` (split at ';' only) for everything else, never differently."""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import sessions
from gateway.cookies import UnreadableCookie, _crm_cookies_in, crm_cookies, own_cookie, sets_cookie
from gateway.sessions import _Unsure, cookie_value

NAME = "crmgw_session"


def slow_path(header: str) -> str | None:
    """What load_cookie answers when the fast path declines."""
    return own_cookie([header], NAME)


@pytest.mark.parametrize(("header", "expected"), [
    ("", None),
    ("theme=dark", None),
    (f"{NAME}=abc", "abc"),
    (f'{NAME}="gAAAAB-x_y=="', "gAAAAB-x_y=="),
    (f"theme=dark; {NAME}=abc; lang=en", "abc"),
    (f"{NAME}=same; {NAME}=same", "same"),
    (f"{NAME}=", ""),
    (f"{NAME}", None),  # no '=': a nameless cookie to browsers
    (f"x{NAME}=abc; {NAME}x=def", None),
    (f"  {NAME}  =  abc  ", "abc"),
    (f"\u00a0{NAME}=abc", None),  # a cookie of its own to a browser, which trims spaces and tabs only
    (f"pref=1 {NAME}=abc", None),  # one cookie, `pref`, to a browser
])
def test_reads_cookies_as_browsers_name_them(header: str, expected: str | None) -> None:
    assert slow_path(header) == expected
    with contextlib.suppress(_Unsure):  # not plain pairs: the slow path's answer is the one
        assert cookie_value(header, NAME) == expected


def test_two_copies_with_different_values_are_refused() -> None:
    """Review 9: a sibling subdomain's Domain= cookie or a script's for a narrower path is sent beside the
    gateway's own, in an order the attacker chooses: neither the first nor the last copy can be trusted."""
    with pytest.raises(_Unsure):
        cookie_value(f"{NAME}=first; {NAME}=second", NAME)
    with pytest.raises(UnreadableCookie):
        slow_path(f"{NAME}=first; {NAME}=second")
    with pytest.raises(UnreadableCookie):
        own_cookie([f"{NAME}=first", f"a=1; {NAME}=second"], NAME)


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


_PIECES = st.lists(st.sampled_from([*'ab=;" \\,\t\x00é', NAME, f"{NAME}=", "gAAAA==", "; "]), max_size=24)


@given(_PIECES.map("".join))
def test_the_fast_path_never_disagrees_with_the_slow_one(header: str) -> None:
    try:
        fast = cookie_value(header, NAME)
    except _Unsure:
        return
    assert fast == slow_path(header)


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


def test_own_cookie_is_split_at_semicolons_only() -> None:
    assert own_cookie(['a="x y"; crmgw_session=one', "b=2"], "crmgw_session") == "one"
    assert own_cookie(["a=1"], "crmgw_session") is None
    # review 9: a copy after a space is another cookie's value to a browser: not the gateway's, and no 400
    assert own_cookie(["crmgw_session=one; pref=1 crmgw_session=two"], "crmgw_session") == "one"
    assert own_cookie(["\u3000crmgw_session=two; crmgw_session\u00a0=three"], "crmgw_session") is None
    with pytest.raises(UnreadableCookie):
        own_cookie(["a=" + "b" * 40_000], "crmgw_session")
