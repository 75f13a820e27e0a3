"""Who is this? The gateway session's user, or the username a login POST submits (DESIGN.md §4).

Also guards the CRM's own session cookie: one that is not bound to this
gateway session is removed before forwarding, so a CRM session obtained around
the gateway (or before it was installed) is useless through it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import replace
from email.parser import BytesParser
from email.policy import HTTP
from urllib.parse import parse_qsl, unquote

from aiohttp import web

from gateway.caching import cache_short_keys
from gateway.exchange import Exchange
from gateway.filters.policy import facts_of
from gateway.logs import get_logger
from gateway.policy import Policy
from gateway.sessions import SessionStore, fingerprint, save_session_later
from gateway.settings import LoginSettings
from gateway.state import StateUnavailable

log = get_logger("identity")

MAX_LOGIN_BODY = 64 * 1024
MAX_USERNAME = 256  # characters, as submitted
# What a multipart login body may hold. The standard library's MIME parser costs ~10 us per byte
# of part headers (and more than linear in the number of parts): 64 KiB of them held the event
# loop for over half a second. A login form has a handful of fields and short part headers.
MAX_LOGIN_PARTS = 16
MAX_LOGIN_PART_HEADERS = 2048  # bytes, all parts together
FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
# Charsets under which the body's bytes mean what the gateway reads: anything else
# (utf-16, latin-1 ...) would let the CRM decode a name the gateway never saw.
_UTF8 = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})


class UnreadableLogin(ValueError):
    """The login cannot be read unambiguously: answered 400 rather than guessing who logs in.

    Two readings of one body (a field twice, a username in the query string too,
    a charset the gateway does not decode) mean some CRM may log in a user the
    gateway did not judge.
    """


def normalise_username(value: str) -> str | None:
    """The name rules are matched against: NFKC, stripped, lower-cased.

    'JIM ' and a fullwidth 'jim' (U+FF4A U+FF49 U+FF4D) must not slip past a rule
    about 'jim' (many CRMs, Django's among them, apply NFKC to usernames). Control
    characters are refused: a C back end stops at NUL, so 'bob%00x' is bob there. So are
    names longer than MAX_USERNAME: each failed login keeps a counter named after the
    username, and 100,000 of them at 64 KiB would hold gigabytes.
    """
    if len(value) > MAX_USERNAME:
        raise UnreadableLogin(f"username longer than {MAX_USERNAME} characters")
    name = unicodedata.normalize("NFKC", value).strip().lower()
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise UnreadableLogin("username contains a control character or is not valid UTF-8")
    return name or None


def php_field_name(name: str) -> str:
    """How PHP reads a form field name: 'user.name', 'user name' are user_name; 'username[]' is username."""
    name = name.lstrip(" ")
    bracket = name.find("[")
    if bracket > 0 and "]" in name[bracket:]:
        name = name[:bracket]
    return name.replace(" ", "_").replace(".", "_").replace("[", "_")


_TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = rf'{_TCHARS}|"[^"\\;]*"'  # a token, or a quoted string without quotes, backslashes or ';' inside
_MEDIA_TYPE = re.compile(rf"[ \t]*({_TCHARS}/{_TCHARS})((?:[ \t]*;[ \t]*{_TCHARS}=(?:{_VALUE}))*)[ \t]*")
_PARAMETER = re.compile(rf";[ \t]*({_TCHARS})=({_VALUE})")
# RFC 2046 §5.1.1: 1-70 of these characters, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_LOGIN_PARAMETERS = frozenset({"charset", "boundary"})


def login_media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """A login body's media type and its parameters, read one way only (lower-case type and names).

    Parsers disagree on the rest: RFC 2231 forms (``boundary*=``, ``boundary*0*=``), a
    parameter given twice, a ``;`` or a backslash inside quotes. With two boundaries, a
    body can hold two multipart documents, one for the gateway's MIME parser and one for
    the CRM's: the gateway would judge one user while the CRM logs in another. So only
    ``charset`` and ``boundary`` are read, once each, as a token or a plain quoted string.
    """
    whole = _MEDIA_TYPE.fullmatch(content_type)
    if whole is None:
        raise UnreadableLogin(f"Content-Type {_echo(content_type)} cannot be read one way only")
    parameters: dict[str, str] = {}
    for name, value in _PARAMETER.findall(whole.group(2)):
        name = name.lower()
        if name not in _LOGIN_PARAMETERS:
            raise UnreadableLogin(f"Content-Type parameter {_echo(name)} is not read in a login body")
        if name in parameters:
            raise UnreadableLogin(f"Content-Type parameter {name!r} given twice")
        parameters[name] = value[1:-1] if value.startswith('"') else value
    return whole.group(1).lower(), parameters


def _echo(text: str) -> str:
    """Client text in a log message: quoted and at most 60 characters, so logs cannot be flooded."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _only(values: list[str], field: str) -> str | None:
    if len(values) > 1:
        raise UnreadableLogin(f"the field {field!r} is given {len(values)} times")
    return normalise_username(values[0]) if values else None


def username_from_body(body: bytes, content_type: str, field: str) -> str | None:
    """The submitted username from a url-encoded, multipart or JSON login body (None: none given).

    Raises :class:`UnreadableLogin` when the body has more than one reading:
    the field twice (PHP takes the last, most others the first), a field name
    PHP reads as the same field, a non-string JSON value, a charset other than
    UTF-8, or a media type the gateway does not read.
    """
    kind, parameters = login_media_type(content_type) if content_type.strip() else ("", {})
    charset = parameters.get("charset", "").strip().lower()
    if charset and charset not in _UTF8:
        raise UnreadableLogin(f"login body in charset {_echo(charset)}; only UTF-8 is read")
    if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
        return _from_json(body, field)
    if kind == MULTIPART:
        boundary = parameters.get("boundary", "")
        if _BOUNDARY.fullmatch(boundary) is None:
            raise UnreadableLogin(f"multipart login body with the boundary {_echo(boundary)}")
        return _from_multipart(body, boundary, field)
    if kind in ("", FORM):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableLogin("form body is not UTF-8") from None
        return _only(form_values(text, field), field)
    raise UnreadableLogin(f"login body of type {_echo(kind)} cannot be read")


def form_values(text: str, field: str) -> list[str]:
    """Every value of ``field`` in url-encoded ``text``; spellings PHP reads as the field are refused."""
    values = []
    for name, value in parse_qsl(text, keep_blank_values=True, errors="surrogateescape"):
        if name == field:
            values.append(value)
        elif php_field_name(name) == field:
            raise UnreadableLogin(f"the field {_echo(name)} reads as {field!r} in some back ends")
    return values


def _from_json(body: bytes, field: str) -> str | None:
    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        if sum(1 for key, _ in items if key == field) > 1:
            raise UnreadableLogin(f"the key {field!r} is given twice")
        return dict(items)

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=pairs)
    except UnicodeDecodeError:
        raise UnreadableLogin("JSON body is not UTF-8") from None
    except RecursionError:
        raise UnreadableLogin("JSON body nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, UnreadableLogin):
            raise
        return None  # not JSON at all: the CRM will refuse it too
    if not isinstance(data, dict) or field not in data:
        return None
    value = data[field]
    if not isinstance(value, str):
        raise UnreadableLogin(f"the key {field!r} is not a string")
    return normalise_username(value)


def _bound_multipart(body: bytes, boundary: str) -> None:
    """Refuse a multipart body the MIME parser would spend long on (see MAX_LOGIN_PARTS).

    Counted on every occurrence of the delimiter and on each piece's bytes up to its
    first blank line: never less than what the parser will find, so a body that
    passes here is cheap to parse.
    """
    pieces = body.split(b"--" + boundary.encode("ascii"))
    if len(pieces) - 1 > MAX_LOGIN_PARTS + 1:  # the closing delimiter is one more
        raise UnreadableLogin(f"multipart login body with more than {MAX_LOGIN_PARTS} parts")
    if sum(len(piece.partition(b"\r\n\r\n")[0]) for piece in pieces[1:]) > MAX_LOGIN_PART_HEADERS:
        raise UnreadableLogin(f"multipart login body with over {MAX_LOGIN_PART_HEADERS} bytes of part headers")


def _from_multipart(body: bytes, boundary: str, field: str) -> str | None:
    """The username part of a multipart body split at ``boundary`` (the one the client's header names)."""
    _bound_multipart(body, boundary)
    message = BytesParser(policy=HTTP).parsebytes(
        b'Content-Type: multipart/form-data; boundary="' + boundary.encode("ascii") + b'"\r\n\r\n' + body
    )
    if not message.is_multipart():
        return None
    values = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name != field:
            if isinstance(name, str) and php_field_name(name) == field:
                raise UnreadableLogin(f"the part {_echo(name)} reads as {field!r} in some back ends")
            continue
        charset = part.get_content_charset()
        if charset is not None and charset.lower() not in _UTF8:
            raise UnreadableLogin(f"the {field!r} part is in charset {_echo(charset)}; only UTF-8 is read")
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            raise UnreadableLogin(f"the {field!r} part cannot be read")
        values.append(payload.decode("utf-8", "surrogateescape"))
    return _only(values, field)


class UnreadableCookie(ValueError):
    """A CRM session cookie hidden where the gateway cannot remove it alone: answered 400."""


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


def without_url_sessions(forward: str, query: str, name: str) -> tuple[str, str] | None:
    """``forward`` and ``query`` without the path parameters and query fields named like the CRM cookie.

    Servlet containers read a session id from ``;jsessionid=`` in the path, PHP (with
    ``use_only_cookies`` off) from the query: a CRM session carried there would reach
    the CRM unbound, with the request judged as whoever the gateway session says (or
    anonymous). Names are compared as :func:`cookie_name_key` reads them. None when
    neither holds one (the common case: nothing to rebuild).
    """
    wanted = cookie_name_key(name)
    path = forward
    if ";" in forward:
        segments = []
        for segment in forward.split("/"):
            if ";" in segment:
                head, *parameters = segment.split(";")
                segment = ";".join([head, *(p for p in parameters if cookie_name_key(p.partition("=")[0]) != wanted)])
            segments.append(segment)
        path = "/".join(segments)
    kept = query
    if query:
        kept = "&".join(part for part in query.split("&")
                        if cookie_name_key(part.partition("=")[0].replace("+", " ")) != wanted)
    return None if path == forward and kept == query else (path, kept)


class IdentityFilter:
    name = "identity"

    def __init__(self, store: SessionStore, policy: Policy, login: LoginSettings | None, *,
                 case_insensitive: bool) -> None:
        self.store = store
        self.policy = policy
        self.login = login
        fold = str.lower if case_insensitive else str
        self.login_path = fold(login.path) if login else None
        self.logout_paths = frozenset(fold(p) for p in login.logout_paths) if login else frozenset()
        self.crm_cookie = login.upstream_session_cookie if login else None

    def is_login(self, ex: Exchange) -> bool:
        """A login POST, also with a trailing slash: routers that ignore it must not get an unjudged login."""
        assert ex.path is not None
        return (
            self.login is not None
            and self.login_path is not None
            and _without_trailing_slash(ex.path.match) == _without_trailing_slash(self.login_path)
            and ex.request.method == self.login.method
        )

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        request = ex.request
        try:
            session = await self.store.load(request)
        except StateUnavailable as exc:
            public = ex.path.match.startswith("/_gateway/") or self.policy.decide(facts_of(ex, user=None)).public
            if public and not self.is_login(ex):
                # Public pages stay up without the store; nobody is identified. A login is
                # not let through: it could neither be judged by its user nor bound to a session.
                return None
            log.error("session.store_unavailable", request_id=ex.request_id, error=str(exc))
            return ex.deny(503, "session_store_unavailable", retry_after=5)
        ex.session = session
        ex.user = session.get("user")
        if self.store.touch(session) or (not session.new and "user" not in session):
            save_session_later(ex, self.store)

        if self.crm_cookie:
            try:
                found = crm_cookies(request.headers.getall("Cookie", ()), self.crm_cookie)
            except UnreadableCookie as exc:
                return self._bad(ex, str(exc))
            bound = None if "pending" in session else session.get("crm")
            if found and not (
                bound is not None
                and len(found) == 1
                and found[0][0] == self.crm_cookie
                and fingerprint(found[0][1]) == bound
            ):
                # Only the bound cookie, alone and spelled exactly, passes: with two copies
                # the CRM may read either one; another spelling may be the same to the CRM.
                ex.strip_cookies.update(name for name, _ in found)
                log.info("session.crm_cookie_stripped", request_id=ex.request_id, user=ex.user,
                         client_ip=str(ex.client_ip), copies=len(found))
            if (";" in ex.path.forward or ex.query) and (
                url := without_url_sessions(ex.path.forward, ex.query, self.crm_cookie)
            ):
                ex.path, ex.query = replace(ex.path, forward=url[0]), url[1]
                log.info("session.crm_url_session_stripped", request_id=ex.request_id, user=ex.user,
                         client_ip=str(ex.client_ip))

        if ex.path.match in self.logout_paths and "user" in session:
            # The CRM still gets this request with its (bound) cookie, so it ends its session too.
            log.info("session.logout", request_id=ex.request_id, user=ex.user, client_ip=str(ex.client_ip))
            await self.store.end(session)
            save_session_later(ex, self.store)
        elif self.is_login(ex):
            return await self._read_login(ex)
        return None

    async def _read_login(self, ex: Exchange) -> web.StreamResponse | None:
        """Read the (small) login body to learn the username; it is forwarded unchanged."""
        assert self.login is not None
        request = ex.request
        if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
            return self._bad(ex, "login body too large")
        codings = {c.strip().lower() for v in request.headers.getall("Content-Encoding", ()) for c in v.split(",")}
        if codings - {"", "identity"}:
            # The server hands the gateway the decoded body; forwarded under the client's
            # Content-Encoding and Content-Length it would be read differently upstream.
            return self._bad(ex, "compressed login body")
        body = bytearray()
        while chunk := await request.content.read(65536):
            body.extend(chunk)
            if len(body) > MAX_LOGIN_BODY:
                return self._bad(ex, "login body too large")
        ex.body = bytes(body)
        field = self.login.username_field
        try:
            # Back ends that merge query and body (PHP's $_REQUEST, Rails' params) would read it there.
            if any(name == field or php_field_name(name) == field
                   for name, _ in parse_qsl(ex.query, keep_blank_values=True)):
                raise UnreadableLogin(f"the field {field!r} is in the query string")
            ex.user = username_from_body(ex.body, request.headers.get("Content-Type", ""), field)
        except UnreadableLogin as exc:
            return self._bad(ex, str(exc))
        if ex.user is None:
            # Judged without a name, the login POST would pass as an anonymous public request:
            # fail closed (it also tells an admin whose username_field is wrong at once).
            return self._bad(ex, f"no {field!r} field in the login body")
        ex.state["login_attempt"] = True
        return None

    def _bad(self, ex: Exchange, why: str) -> web.StreamResponse:
        log.warning("request.bad_login", request_id=ex.request_id, client_ip=str(ex.client_ip), error=why)
        return ex.deny(400, "bad_request")


def _without_trailing_slash(path: str) -> str:
    return path.rstrip("/") or "/"
