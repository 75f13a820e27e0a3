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
from datetime import UTC, datetime
from urllib.parse import unquote

from gateway.caching import cache_short_keys
from gateway.forms import php_field_name


class UnreadableCookie(ValueError):
    """A session cookie (the CRM's or the gateway's) hidden where readers disagree: answered 400."""


@cache_short_keys(maxsize=1024, longest=128)  # the same few names on every request
def cookie_name_key(name: str) -> str:
    """What a lenient back end takes a cookie name for: PHP decodes and mangles it, ASP.NET ignores case."""
    return php_field_name(unquote(name.strip())).lower()


MAX_COOKIE_BYTES = 32 * 1024  # all Cookie lines of a request together: more is refused (reading costs)


def crm_cookies(lines: list[str], name: str) -> list[tuple[str, str]]:
    """Every (name as sent, value) in all Cookie lines that some back end reads as the CRM cookie ``name``.

    Names are split as the proxy strips them (``;``, then ``=``), so each one
    found here can be removed by name. A copy hidden after a comma or a space
    (``theme=dark, crm_session=X``, ``theme=dark crm_session=X``: two cookies to
    RFC 2109 parsers, to aiohttp's and to Python's ``SimpleCookie``) cannot be
    removed alone and raises :class:`UnreadableCookie`.
    """
    if sum(map(len, lines)) > MAX_COOKIE_BYTES:
        raise UnreadableCookie(f"Cookie lines of over {MAX_COOKIE_BYTES} bytes")
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
    """The value of the gateway's cookie ``name`` in these Cookie lines, as browsers name cookies.

    Split at ``;`` only, a name trimmed of spaces and tabs only (what browsers trim: Python's
    ``strip`` also drops U+00A0 and its kin, so ``\u00a0crmgw_session``, a cookie of its own that
    a script on a CRM page may write beside the HttpOnly one, read as the gateway's). Anything
    else (``pref=1 crmgw_session=X``) is another cookie. Two copies with different values (a
    sibling subdomain's ``Domain=`` cookie, a script's for a narrower path: the browser sends
    both, in an order the attacker can choose) raise :class:`UnreadableCookie`.
    """
    if sum(map(len, lines)) > MAX_COOKIE_BYTES:
        raise UnreadableCookie(f"Cookie lines of over {MAX_COOKIE_BYTES} bytes")
    found = None
    for line in lines:
        for part in line.split(";"):
            sent, equals, value = part.partition("=")
            if equals and sent.strip(" \t") == name:
                value = value.strip(" \t").strip('"')
                if found is not None and value != found:
                    raise UnreadableCookie(f"the {name!r} cookie is sent twice, with different values")
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


def set_cookie(set_cookie_headers: Iterable[str], name: str, *, request_path: str = "/") -> str | None:
    """The value of cookie ``name`` a browser keeps after these Set-Cookie lines (None: none).

    To a browser each (Path, Domain) is a cookie of its own, and a later line replaces an
    earlier one of the same scope; a line with an empty value, a ``Max-Age`` of zero or less
    or an ``Expires`` date past (RFC 6265 §5.2, read as browsers read it) deletes it. A CRM
    that clears its cookie on a failed login (PHP's ``setcookie(name, "")``) opens no session;
    one that clears an old copy of another scope next to the new one does. Of the copies
    left, the one set last is returned (the one bound to the gateway session). A Path that is
    missing or does not start with ``/`` is the default path of ``request_path`` (§5.1.4).
    """
    default_path = _default_path(request_path)
    kept: dict[tuple[str, str], str | None] = {}
    for header in set_cookie_headers:
        first, *attributes = header.split(";")
        key, _, value = first.partition("=")
        if key.strip() != name:
            continue
        named = _attributes(attributes)
        scope = _scope(named, default_path)
        value = value.strip().strip('"')
        kept.pop(scope, None)  # the latest last
        kept[scope] = value if value and not _deletes(named) else None
    live = [value for value in kept.values() if value]
    return live[-1] if live else None


def _attributes(attributes: list[str]) -> dict[str, str]:
    """A Set-Cookie's attributes by lower-case name, the last of each counting (RFC 6265 §5.3)."""
    named = {}
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        named[key.strip().lower()] = value.strip()
    return named


def _scope(named: dict[str, str], default_path: str) -> tuple[str, str]:
    path = named.get("path", "")
    return path if path.startswith("/") else default_path, named.get("domain", "").lower().lstrip(".")


def _default_path(request_path: str) -> str:
    """RFC 6265 §5.1.4: the request path up to its last '/' (``/login`` -> ``/``, ``/app/login`` -> ``/app``)."""
    if not request_path.startswith("/") or request_path.count("/") == 1:
        return "/"
    return request_path[:request_path.rindex("/")]


def _deletes(named: dict[str, str]) -> bool:
    """Whether a Set-Cookie's attributes expire it at once (Max-Age wins over Expires)."""
    if re.fullmatch(r"[-+]?[0-9]+", named.get("max-age", "")):  # Chromium reads +0 too
        return int(named["max-age"]) <= 0
    expires = cookie_date(named["expires"]) if "expires" in named else None
    return expires is not None and expires <= datetime.now(UTC)


_DATE_DELIMITERS = re.compile(r"[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+")
_TIME = re.compile(r"([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(?:[^0-9].*)?", re.DOTALL)
_DAY = re.compile(r"([0-9]{1,2})(?:[^0-9].*)?", re.DOTALL)
_YEAR = re.compile(r"([0-9]{2,4})(?:[^0-9].*)?", re.DOTALL)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def cookie_date(text: str) -> datetime | None:
    """An ``Expires`` value as browsers read it (RFC 6265 §5.1.1), None where they ignore it.

    Not an HTTP-date parser: `Thu, 01 Jan 1970 00:00:00.000 GMT` and `1970 Jan 01 00:00:00`
    are dates, and a two-digit year below 70 is in the 2000s (`31-Dec-69` is 2069).
    """
    time: tuple[int, int, int] | None = None
    day = month = year = None
    for token in _DATE_DELIMITERS.split(text):
        if not token:
            continue
        if time is None and (found := _TIME.fullmatch(token)):
            time = (int(found.group(1)), int(found.group(2)), int(found.group(3)))
        elif day is None and (found := _DAY.fullmatch(token)):
            day = int(found.group(1))
        elif month is None and token[:3].lower() in _MONTHS:
            month = _MONTHS.index(token[:3].lower()) + 1
        elif year is None and (found := _YEAR.fullmatch(token)):
            year = int(found.group(1))
    if time is None or day is None or month is None or year is None:
        return None
    year += 1900 if 70 <= year <= 99 else 2000 if year <= 69 else 0
    if year < 1 or time[0] > 23 or time[1] > 59 or time[2] > 59:  # Chromium keeps years before 1601
        return None
    try:
        return datetime(year, month, day, time[0], time[1], time[2], tzinfo=UTC)
    except ValueError:  # no such day
        return None
