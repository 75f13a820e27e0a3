"""One canonical form of the request path, for matching and for forwarding (DESIGN.md §3.2).

Path-based rules are only as strong as the agreement between the gateway and
the CRM about which route a request names. ``/%62illing``, ``/x/../billing``,
``//billing`` and ``/billing;jsessionid=1`` all reach the CRM's billing pages,
so the gateway rewrites every path into one form before matching, and forwards
that same form, so both sides see the same route. What cannot be put in a safe
canonical form (encoded slashes, NUL, broken escapes, invalid UTF-8) is refused
with :class:`BadPath`, which the caller answers with 400.

This module is pure (no aiohttp) and runs on every request: clean paths take a
fast path that only scans them once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["BadPath", "NormalisedPath", "normalise_path", "split_target"]

_MAX_ECHO = 100

# RFC 3986 unreserved: decoded wherever they were percent-encoded.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Characters a path may carry raw (pchar minus ';', which needs parameter handling, plus '/').
_CLEAN = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/]*")
# Raw characters kept as they are on the slow path: the above plus ';' (path parameters).
_RAW_ONLY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,=:@/;]*")
# Everything else except '%': encoded, or refused (backslash, controls, '?', '#').
_STRAY = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,=:@/;%]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escapes refused outright: encoded '/' and '\' would hide a segment boundary from the
# gateway that a back end may honour; encoded NUL truncates paths in C-based back ends.
_FORBIDDEN_ESCAPES = frozenset({"2F", "5C", "00"})
# Anything encoded twice (%25 followed by two hex digits): a back end that decodes twice
# would see a slash, a dot segment or a route name (/%2562illing is /billing) that the
# gateway did not. A lone %25 (a literal '%') is fine.
_DOUBLE_ENCODED = re.compile(r"%25[0-9A-Fa-f]{2}")
_ABSOLUTE = re.compile(r"(?i)https?://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BadPath(ValueError):
    """The request target cannot be put in a safe canonical form: answer 400.

    The message never echoes more than 100 characters of the client's text.
    """


@dataclass(frozen=True, slots=True)
class NormalisedPath:
    """A path in canonical form.

    ``forward`` is what is sent upstream: unreserved characters decoded, other
    escapes with upper-case hex, dot segments resolved, repeated slashes merged,
    ``;params`` kept (legacy CRMs carry ``;jsessionid=`` in them) and the
    original case kept. ``match`` is what rules see: ``forward`` with ``;params``
    removed from every segment (a segment that is only parameters counts as
    empty and is merged), lower-cased when paths are case-insensitive.
    """

    forward: str
    match: str


# What a refused target's echo hides: a query or fragment, and a ;parameter's value (secrets ride
# there: a password in a login's query, a CRM session id as ;crm_session= or ;jsessionid=).
_HIDDEN = re.compile(r"(;[^;/=?#]*=)[^;/?#]*|[?#].*", re.DOTALL)
_USERINFO = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*:/*)[^/?#]*@")  # ... and user:password@ in an absolute URL


def _echo(text: str) -> str:
    """The client's text for a log: no more than _MAX_ECHO characters, without what may be secret."""
    text = _USERINFO.sub(r"\1...@", text)
    shown = repr(_HIDDEN.sub(lambda m: f"{m[1]}..." if m[1] else f"{m[0][0]}...", text))
    if len(shown) > _MAX_ECHO:
        shown = shown[: _MAX_ECHO - 3] + "..."
    return shown


def split_target(raw_target: str) -> tuple[str, str]:
    """The request-target as received -> (raw path, raw query without ``?``, ``""`` if none).

    Origin-form (``/a?b``) and absolute-form (``http://host:port/a?b``, whose
    authority is dropped; an empty path is ``/``) are accepted. Asterisk-form
    (``*``, only for ``OPTIONS *``), authority-form (``host:443``, CONNECT) and
    anything else are refused, as is a ``#`` anywhere: fragments are never sent
    on the wire, so one in a target means a client or proxy is confused.
    """
    if "#" in raw_target:
        raise BadPath(f"request target contains a fragment: {_echo(raw_target)}")
    if raw_target.startswith("/"):
        path, _, query = raw_target.partition("?")
        return path, query
    scheme = _ABSOLUTE.match(raw_target)
    if scheme:
        rest = raw_target[scheme.end() :]
        cut = len(rest)
        for delimiter in "/?":
            index = rest.find(delimiter)
            if index != -1:
                cut = min(cut, index)
        path, _, query = rest[cut:].partition("?")
        return path or "/", query
    if raw_target == "*":
        raise BadPath("asterisk-form request target (OPTIONS *) is not forwarded")
    raise BadPath(f"request target is neither a path nor an http(s) URL: {_echo(raw_target)}")


def normalise_path(raw_path: str, *, case_insensitive: bool = False) -> NormalisedPath:
    """Canonicalise ``raw_path`` (the path part of the target, still percent-encoded).

    Raises :class:`BadPath` for: a path not starting with ``/``; an encoded
    slash or backslash (``%2F``, ``%5C``); anything encoded twice (``%252F``,
    ``%2562``: ``%25`` followed by two hex digits); a raw backslash; NUL or any
    other control character, raw or encoded (C0, DEL, C1); ``?`` or ``#`` (the
    caller should have split them off); invalid percent-encoding (``%``, ``%G1``, ``%4``); bytes that are
    not valid UTF-8 once fully decoded (overlong ``%C0%AE`` included); lone
    surrogates. Other raw characters outside RFC 3986 ``pchar`` (``|``, ``"``,
    non-ASCII) are percent-encoded, so a raw and an encoded spelling of the
    same character normalise alike.
    """
    if not raw_path.startswith("/"):
        raise BadPath(f"path must start with '/': {_echo(raw_path)}")
    if _CLEAN.fullmatch(raw_path) and "//" not in raw_path and "/." not in raw_path:
        return NormalisedPath(raw_path, raw_path.lower() if case_insensitive else raw_path)
    encoded = _canonical_escapes(raw_path)
    forward, match = _resolve_segments(encoded)
    return NormalisedPath(forward, match.lower() if case_insensitive else match)


def _canonical_escapes(raw_path: str) -> str:
    """Decode unreserved escapes, upper-case the others, encode stray characters; validate."""
    if _RAW_ONLY.fullmatch(raw_path):  # e.g. only ';params' or '//': nothing to decode
        return raw_path
    if _BAD_ESCAPE.search(raw_path):
        raise BadPath(f"invalid percent-encoding in path: {_echo(raw_path)}")

    def escape(found: re.Match[str]) -> str:
        hex_digits = found.group(1).upper()
        if hex_digits in _FORBIDDEN_ESCAPES:
            raise BadPath(f"path contains an encoded '/', '\\' or NUL (%{hex_digits}): {_echo(raw_path)}")
        decoded = chr(int(hex_digits, 16))
        return decoded if decoded in _UNRESERVED else "%" + hex_digits

    def stray(found: re.Match[str]) -> str:
        char = found.group()
        if char == "\\":
            raise BadPath(f"path contains a backslash: {_echo(raw_path)}")
        if char in "?#":
            raise BadPath(f"path contains {char!r}, which only delimits query or fragment: {_echo(raw_path)}")
        if _CONTROL.match(char):
            raise BadPath(f"path contains a control character: {_echo(raw_path)}")
        try:
            raw_bytes = char.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: the wire bytes were not UTF-8
            raise BadPath(f"path is not valid UTF-8: {_echo(raw_path)}") from None
        return "".join(f"%{byte:02X}" for byte in raw_bytes)

    encoded = _STRAY.sub(stray, _ESCAPE.sub(escape, raw_path))
    # Checked on the result: '%25%30%30' is '%2500' once the unreserved '0's are decoded.
    if _DOUBLE_ENCODED.search(encoded):
        raise BadPath(f"path contains a double-encoded character (%25 and two hex digits): {_echo(raw_path)}")
    if "%" in encoded:
        _check_decoded(encoded, raw_path)
    return encoded


def _check_decoded(encoded: str, raw_path: str) -> None:
    """The fully decoded path must be valid UTF-8 without control characters."""
    try:
        text = _percent_decode(encoded).decode("utf-8")
    except UnicodeDecodeError:
        raise BadPath(f"path is not valid UTF-8 once decoded: {_echo(raw_path)}") from None
    if _CONTROL.search(text):
        raise BadPath(f"path contains an encoded control character: {_echo(raw_path)}")


def _percent_decode(encoded: str) -> bytes:
    parts = encoded.split("%")
    out = bytearray(parts[0].encode("ascii"))
    for part in parts[1:]:
        out.append(int(part[:2], 16))
        out.extend(part[2:].encode("ascii"))
    return bytes(out)


def _resolve_segments(path: str) -> tuple[str, str]:
    """RFC 3986 §5.2.4 dot-segment removal, merging empty segments; -> (forward, match).

    A segment counts as ``.`` or ``..`` by its name before any ``;``, as Tomcat
    and Jetty read ``/..;/``; such segments are resolved and their parameters
    dropped. A segment that is only parameters (``/;x/``) stays in ``forward``
    (it carries information) but is empty, hence merged, in ``match``.
    """
    parts = path.split("/")
    last = len(parts) - 1
    kept: list[str] = []
    trailing = False
    for position in range(1, last + 1):
        segment = parts[position]
        name = segment.partition(";")[0] if ";" in segment else segment
        if segment == "" or name == ".":
            trailing = position == last
        elif name == "..":
            if kept:
                kept.pop()
            trailing = position == last
        else:
            kept.append(segment)
            trailing = False
    if not kept:
        return "/", "/"
    forward = "/" + "/".join(kept) + ("/" if trailing else "")
    names = [segment.partition(";")[0] for segment in kept]
    match_names = [name for name in names if name]
    if not match_names:
        return forward, "/"
    match_trailing = trailing or not names[-1]
    match = "/" + "/".join(match_names) + ("/" if match_trailing else "")
    return forward, match
