"""Cookie lines read the way lenient back ends read them (one module for both cookies that matter).

RFC 6265 splits a Cookie line at ``;`` only, but aiohttp's parser, Python's ``SimpleCookie``
and RFC 2109 parsers also end a cookie at a comma or at whitespace, and PHP decodes and
mangles names, ASP.NET ignores their case. A copy of the CRM's session cookie, or of the
gateway's own, that one reader sees and another does not would let a request run under a
session nobody judged: such lines are refused (:class:`UnreadableCookie`, answered 400).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

from gateway.caching import cache_short_keys
from gateway.forms import php_field_name


class UnreadableCookie(ValueError):
    """A session cookie (the CRM's or the gateway's) hidden where readers disagree: answered 400."""


@cache_short_keys(maxsize=1024, longest=128)  # the same few names on every request
def cookie_name_key(name: str) -> str:
    """What a lenient back end takes a cookie name for: PHP decodes and mangles it, ASP.NET ignores case."""
    return php_field_name(unquote(name.strip())).lower()


def crm_cookies(lines: Iterable[str], name: str) -> list[tuple[str, str]]:
    """Every (name as sent, value) in all Cookie lines that some back end reads as the CRM cookie ``name``.

    Names are split as the proxy strips them (``;``, then ``=``), so each one
    found here can be removed by name. A copy hidden after a comma or a space
    (``theme=dark, crm_session=X``, ``theme=dark crm_session=X``: two cookies to
    RFC 2109 parsers, to aiohttp's and to Python's ``SimpleCookie``) cannot be
    removed alone and raises :class:`UnreadableCookie`.
    """
    found: list[tuple[str, str]] = []
    for line in lines:
        found += _crm_cookies_in(line, name)
    return found


@cache_short_keys(maxsize=1024, longest=4096)  # a browser sends the same Cookie line request after request
def _crm_cookies_in(line: str, name: str) -> tuple[tuple[str, str], ...]:
    """:func:`crm_cookies` of one Cookie line."""
    wanted = cookie_name_key(name)
    found = []
    for part in line.split(";"):
        sent, _, value = part.partition("=")
        if cookie_name_key(sent) == wanted and sent.strip():
            found.append((sent.strip(), value.strip().strip('"')))
        for hidden in _LENIENT_SEPARATORS.split(part.strip())[1:]:
            if cookie_name_key(hidden.partition("=")[0]) == wanted:
                raise UnreadableCookie(f"a {name!r} cookie is hidden after a comma or a space")
    return tuple(found)


# Where lenient cookie parsers also end a cookie, besides ';' (see crm_cookies).
_LENIENT_SEPARATORS = re.compile(r"[\s,]+")


def own_cookie(lines: list[str], name: str) -> str | None:
    """The value of the gateway's cookie ``name`` in these Cookie lines, split at ``;`` only (the last copy).

    A copy hidden after a comma or whitespace (``pref=1 crmgw_session=X``, which a CRM page
    can plant as the value of a cookie of its own) raises :class:`UnreadableCookie`: aiohttp's
    parser would read that copy, the browser meant another.
    """
    found = None
    for sent, value in crm_cookies(lines, name):
        if sent == name:
            found = value
    return found


def sets_cookie(set_cookie: str, name: str) -> bool:
    """Whether a Set-Cookie value sets cookie ``name``, or hides it in its value for lenient readers.

    ``pref=1 crmgw_session=X`` sets ``pref`` to a browser, and the browser sends it back as it
    is, where aiohttp's parser reads a ``crmgw_session``; ``=crmgw_session=X`` sets a nameless
    cookie, sent back as ``crmgw_session=X``: such lines count as setting it.
    """
    first = set_cookie.split(";", 1)[0].strip()
    if first.startswith("=") or "=" not in first:
        # A nameless cookie (RFC 6265bis §5.6): the browser sends its value alone, `crmgw_session=X`.
        first = first[1:] if first.startswith("=") else first
    wanted = cookie_name_key(name)
    return any(cookie_name_key(piece.partition("=")[0]) == wanted
               for piece in _LENIENT_SEPARATORS.split(first) if piece)
