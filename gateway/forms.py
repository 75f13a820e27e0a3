"""A small request body read one way only: the username of a login, a method override (DESIGN.md §4).

The gateway judges some requests by a field of their body (the login POST by its
username, a POST by the ``_method`` it asks the CRM to run). It reads such a body
whole, bounded. A login body is read one way only (:func:`field_from_body`: the
shapes login forms send, multipart framed strictly) and every other way a back end
may read it must agree (:func:`login_username`); one that another parser (the CRM's)
could read differently is refused with :class:`UnreadableBody` (a field twice, a
charset other than UTF-8, a Content-Type with two boundaries, a field name some back
end reads as this one). A method override is looked for every way a back end may
read it (:func:`field_values`).
"""

from __future__ import annotations

import bisect
import codecs
import contextlib
import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Collection, Iterable
from urllib.parse import parse_qsl, unquote

from aiohttp import web

MAX_BODY = 64 * 1024  # the largest body read to judge a request
MAX_MENTIONS = 1000  # the most places a body searched for a method override may name it (see field_values)
MAX_BOUNDARIES = 3  # ... and the most multipart boundaries its Content-Type may name
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
# ... and the single-byte charsets clients declare that read ASCII bytes as ASCII (Apache HttpClient: ISO-8859-1).
_LATIN1 = frozenset({"iso-8859-1", "iso8859-1", "latin1", "latin-1", "windows-1252", "cp1252"})


class UnreadableBody(ValueError):
    """The body cannot be read unambiguously: answered 400 rather than guessing.

    Two readings of one body (a field twice, a username in the query string too,
    a charset the gateway does not decode) mean some CRM may log in a user the
    gateway did not judge, or run a method it did not judge.
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
        raise UnreadableBody(f"username longer than {MAX_USERNAME} characters")
    name = unicodedata.normalize("NFKC", value).strip().lower()
    # Format characters too: JavaScript's trim() drops a U+FEFF that Python's strip() keeps, and MySQL's
    # _ci collations ignore zero-width spaces and soft hyphens ('\ufeffbob' is bob to such a CRM).
    if any(unicodedata.category(char) in ("Cc", "Cs", "Cf") for char in name):
        raise UnreadableBody("username contains a control or format character or is not valid UTF-8")
    return name or None


def reads_as(name: str, wanted: Collection[str]) -> bool:
    """Whether some back end reads the field ``name`` as one of ``wanted`` (lower case): in any case (ASP.NET),
    or renamed as PHP renames it."""
    php = php_field_name(name)
    return any(spelling in wanted for spelling in (name.lower(), php.lower(), folded(name), folded(php)))


def folded(name: str) -> str:
    """``name`` in lower case after upper case: ASP.NET's and Go's case-blind comparisons take the long s
    and the dotless i (U+017F, U+0131) for s and i, which ``lower()`` alone does not."""
    return name.upper().lower()


def php_field_name(name: str) -> str:
    """How PHP reads a form field name: 'user.name', 'user name' are user_name; 'username[]' is username;
    'username\\0x' is username (PHP ends a name at NUL)."""
    name = name.partition("\x00")[0].lstrip(" ")
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


def media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """A body's media type and its parameters, read one way only (lower-case type and names).

    Parsers disagree on the rest: RFC 2231 forms (``boundary*=``, ``boundary*0*=``), a
    parameter given twice, a ``;`` or a backslash inside quotes. With two boundaries, a
    body can hold two multipart documents, one for the gateway's MIME parser and one for
    the CRM's: the gateway would judge one user while the CRM logs in another. So only
    ``charset`` and ``boundary`` are read, once each, as a token or a plain quoted string.
    """
    whole = _MEDIA_TYPE.fullmatch(content_type)
    if whole is None:
        raise UnreadableBody(f"Content-Type {_echo(content_type)} cannot be read one way only")
    parameters: dict[str, str] = {}
    for name, value in _PARAMETER.findall(whole.group(2)):
        name = name.lower()
        if name not in _LOGIN_PARAMETERS:
            raise UnreadableBody(f"Content-Type parameter {_echo(name)} is not read in a body the gateway judges")
        if name in parameters:
            raise UnreadableBody(f"Content-Type parameter {name!r} given twice")
        parameters[name] = value[1:-1] if value.startswith('"') else value
    return whole.group(1).lower(), parameters


def _echo(text: str) -> str:
    """Client text in a log message: quoted and at most 60 characters, so logs cannot be flooded."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _only(values: list[str], field: str) -> str | None:
    if len(values) > 1:
        raise UnreadableBody(f"the field {field!r} is given {len(values)} times")
    return normalise_username(values[0]) if values else None


def field_from_body(body: bytes, content_type: str, field: str) -> str | None:
    """A field of a url-encoded, multipart or JSON body, as :func:`normalise_username` folds it (None: not given).

    Raises :class:`UnreadableBody` when the body has more than one reading:
    the field twice (PHP takes the last, most others the first), a field name
    PHP reads as the same field, a non-string JSON value, a charset other than
    UTF-8, or a media type the gateway does not read.
    """
    kind, parameters = media_type(content_type) if content_type.strip() else ("", {})
    charset = parameters.get("charset", "").strip().lower()
    if charset and charset not in _UTF8 | _LATIN1:
        raise UnreadableBody(f"body in charset {_echo(charset)}; only UTF-8 is read")
    is_json = kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
    if not is_json and "json" in content_type.lower():  # Laravel reads any type with /json or +json as JSON
        raise UnreadableBody(f"Content-Type {_echo(content_type)} may be read as JSON")
    if is_json:
        return _from_json(body, field)
    if kind == MULTIPART:
        boundary = parameters.get("boundary", "")
        if _BOUNDARY.fullmatch(boundary) is None:
            raise UnreadableBody(f"multipart body with the boundary {_echo(boundary)}")
        return _from_multipart(body, boundary, field)
    if "boundary" in parameters:
        raise UnreadableBody(f"a boundary in a {_echo(kind)} Content-Type")
    if kind in ("", FORM):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableBody("form body is not UTF-8") from None
        return _only(form_values(text, field), field)
    raise UnreadableBody(f"body of type {_echo(kind)} cannot be read")


def login_username(body: bytes, content_type: str, field: str, query: str = "") -> str | None:
    """The username of a login body: read one way (:func:`field_from_body`), and every other reading agreeing.

    The one reading is what the gateway judges; the CRM's framework reads the body its own way.
    So the body is also searched as for a method override (:func:`field_values`: any case, PHP's
    renamings, percent-encoded names, JSON keys at any depth, every way a multipart head may end,
    a JSON body behind a form's Content-Type), and a value found there that is not the username
    read, or a place naming the field that no reading accounts for, refuses the body. So does
    the field anywhere in the ``query`` where a back end reads a name (PHP's ``$_REQUEST`` and
    Rails' ``params`` merge the two; Rack splits a query at ``;`` too and drops brackets).
    """
    try:
        in_query = bool(query) and bool(field_values(query.encode("utf-8", "surrogateescape"), FORM, field))
    except UnreadableBody:
        in_query = True
    if in_query:
        raise UnreadableBody(f"the field {field!r} is in the query string")
    user = field_from_body(body, content_type, field)
    for value in field_values(body, content_type, field):
        if user is None or user not in _readings_of(value):
            raise UnreadableBody(f"the field {field!r} has more than one reading")
    # Another charset than UTF-8 (declared on the body, Apache HttpClient 5's ISO-8859-1, or in a
    # `_charset_` field, which Jetty decodes the other parts in): the same name only if it is ASCII.
    charsets = {c.strip().lower() for c in _CHARSET.findall(content_type)}
    charsets |= {c.strip().lower() for c in field_values(body, content_type, "_charset_")}
    if charsets - _UTF8 and (charsets - _UTF8 - _LATIN1 or not (user or "").isascii()):
        raise UnreadableBody(f"a login body in charset {_echo(', '.join(sorted(charsets)))}")
    return user


def _readings_of(value: str) -> set[str | None]:
    """A value :func:`field_values` found, as a username: its text, and its bytes read as UTF-8
    (that search reads a body as Latin-1: a raw UTF-8 name arrives as its bytes)."""
    texts = [value]
    with contextlib.suppress(UnicodeError):
        texts.append(value.encode("latin-1").decode("utf-8"))
    readings = set()
    for text in texts:
        with contextlib.suppress(UnreadableBody):
            readings.add(normalise_username(text))
    return readings


def form_values(text: str, field: str) -> list[str]:
    """Every value of ``field`` in url-encoded ``text``; spellings PHP reads as the field are refused."""
    values = []
    for name, value in parse_qsl(text, keep_blank_values=True, errors="surrogateescape"):
        if name == field:
            values.append(value)
        elif reads_as(name, {field.lower()}):
            raise UnreadableBody(f"the field {_echo(name)} reads as {field!r} in some back ends")
    return values


def _from_json(body: bytes, field: str) -> str | None:
    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        if sum(1 for key, _ in items if key == field) > 1:
            raise UnreadableBody(f"the key {field!r} is given twice")
        if any(key != field and reads_as(key, {field.lower()}) for key, _ in items):
            raise UnreadableBody(f"a key read as {field!r} by case-blind back ends (Go, ASP.NET)")
        return dict(items)

    try:
        data = json.loads(body.decode("utf-8"), object_pairs_hook=pairs)
    except UnicodeDecodeError:
        raise UnreadableBody("JSON body is not UTF-8") from None
    except RecursionError:
        raise UnreadableBody("JSON body nested too deeply") from None
    except ValueError as exc:
        if isinstance(exc, UnreadableBody):
            raise
        return None  # not JSON at all: the CRM will refuse it too
    if not isinstance(data, dict) or field not in data:
        return None
    value = data[field]
    if not isinstance(value, str):
        raise UnreadableBody(f"the key {field!r} is not a string")
    return normalise_username(value)


# A part's header line as login forms write them: a token, a colon, a value without control characters
# (no folded lines, no bare CR or LF, no space before the colon: back ends read those apart).
_PART_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*+([^\x00-\x08\x0a-\x1f\x7f]*)")
# Content-Disposition as browsers, curl and HTTP libraries write it: `name` and `filename`, quoted with
# nothing inside that a reader unescapes or splits at, or a token (.NET's HttpClient leaves a name such
# as `username` unquoted); no RFC 2231 `name*`.
_DISPOSITION_VALUE = r'"[^"\\;\x00-\x1f\x7f]*"|[!#$%&\'*+.^_`|~0-9A-Za-z-]+'
_DISPOSITION = re.compile(rf"form-data((?:; (?:name|filename)=(?:{_DISPOSITION_VALUE}))+)")
_DISPOSITION_PARAMETER = re.compile(rf"; (name|filename)=({_DISPOSITION_VALUE})")
_PART_HEADERS = frozenset({"content-disposition", "content-type", "content-length", "content-transfer-encoding"})
# What clients send that leaves the bytes as they are (Dart's http: binary; Apache HttpClient: 8bit).
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})


def _from_multipart(body: bytes, boundary: str, field: str) -> str | None:
    """The username part of a multipart body, if the body is framed the one way every reader splits alike.

    Readers split a multipart body differently at its edges: a delimiter inside a line (Django)
    or followed by other characters, a preamble (commons-fileupload, Werkzeug), parts after the
    closing delimiter (PHP, Django), a head ended by bare LFs (Rack reads on), a folded or bare-CR
    header line, two Content-Disposition headers or two names in one (the first or the last),
    RFC 2231 names. A login form has none of these: such a body is refused, and the parts of
    the rest are read here.
    """
    values = []
    for head, content in _login_parts(body, boundary):
        name, charset, has_filename = _part_name(head)
        if name != field:
            # A head is read as Latin-1: a name in UTF-8 (a long s for an s) is checked as its characters too.
            spellings = {name, name.encode("latin-1").decode("utf-8", "replace")}
            if any(reads_as(spelling, {field.lower()}) for spelling in spellings):
                raise UnreadableBody(f"the part {_echo(name)} reads as {field!r} in some back ends")
            continue
        # Another charset reads the same name only from ASCII bytes (Apache HttpClient declares ISO-8859-1).
        if charset not in ("", *_UTF8) and not (content.isascii() and charset in _LATIN1):
            raise UnreadableBody(f"the {field!r} part is in charset {_echo(charset)}; only UTF-8 is read")
        if has_filename:  # a file to most readers; Perl's CGI.pm reads the file's name as the value
            raise UnreadableBody(f"the {field!r} part is a file upload")
        values.append(content.decode("utf-8", "surrogateescape"))
    return _only(values, field)


def _login_parts(body: bytes, boundary: str) -> list[tuple[list[tuple[str, str]], bytes]]:
    """(head as (lower-case name, value) pairs, content) of each part; :class:`UnreadableBody` unless the body
    opens with the delimiter, every delimiter begins a line and ends it, and nothing follows the closing one."""
    delimiter = b"--" + boundary.encode("ascii")
    closing = body.find(b"\r\n" + delimiter + b"--")
    if not body.startswith(delimiter + b"\r\n") or closing < 0:
        raise UnreadableBody("a multipart body that does not open with its delimiter or is not closed")
    if body[closing + len(delimiter) + 4:] not in (b"", b"\r\n"):
        raise UnreadableBody("a multipart body with something after its closing delimiter")
    starts, at = [], 0
    while at < closing:
        if (at and body[at - 2:at] != b"\r\n") or body[at + len(delimiter):at + len(delimiter) + 2] != b"\r\n":
            raise UnreadableBody("a multipart delimiter inside a line, or followed by other characters")
        starts.append(at + len(delimiter) + 2)
        at = body.find(delimiter, at + len(delimiter))
        if len(starts) > MAX_LOGIN_PARTS:
            raise UnreadableBody(f"multipart body with more than {MAX_LOGIN_PARTS} parts")
    parts, head_bytes = [], 0
    for index, start in enumerate(starts):
        end = starts[index + 1] - len(delimiter) - 4 if index + 1 < len(starts) else closing
        head, blank, content = body[start:end].partition(b"\r\n\r\n")
        head_bytes += len(head)
        if not blank or not head or head_bytes > MAX_LOGIN_PART_HEADERS:
            raise UnreadableBody(f"a multipart part without a head, or over {MAX_LOGIN_PART_HEADERS} bytes of them")
        lines = [_PART_HEADER.fullmatch(line) for line in head.split(b"\r\n")]
        if not all(lines):
            raise UnreadableBody("a multipart part head with a line login forms do not write")
        parts.append(([(m[1].decode("ascii").lower(), m[2].decode("latin-1")) for m in lines if m], content))
    return parts


def _part_name(head: list[tuple[str, str]]) -> tuple[str, str, bool]:
    """A part's name, read from its one Content-Disposition header, its charset ('' if none), and whether
    it names a file."""
    headers = dict(head)
    if len(headers) != len(head) or set(headers) - _PART_HEADERS or "content-disposition" not in headers:
        raise UnreadableBody("a multipart part head with other headers than a login form's, or one twice")
    disposition = headers["content-disposition"]
    written = _DISPOSITION.fullmatch(disposition)
    parameters = _DISPOSITION_PARAMETER.findall(written[1]) if written else []
    keys = [key for key, _ in parameters]
    if keys.count("name") != 1 or keys.count("filename") > 1:
        raise UnreadableBody(f"a part's Content-Disposition {_echo(disposition)} cannot be read one way")
    name = dict(parameters)["name"].strip('"')
    if headers.get("content-transfer-encoding", "7bit").strip().lower() not in _IDENTITY_ENCODINGS:
        raise UnreadableBody("a multipart part in a transfer encoding back ends decode or not (base64)")
    if not name or name != name.strip():
        raise UnreadableBody(f"a part name {_echo(name)} with spaces around it (some back ends trim them)")
    charset = media_type(headers["content-type"])[1].get("charset", "") if "content-type" in headers else ""
    return name, charset.strip().lower(), "filename" in keys


async def read_small_body(request: web.Request, what: str, limit: int = MAX_BODY) -> bytes:
    """The whole request body, to be judged and then forwarded in place of the stream (``what``: for messages).

    Raises :class:`UnreadableBody` for a body over ``limit`` bytes and for a
    compressed one: the server hands the gateway the decoded body, which forwarded
    under the client's Content-Encoding and Content-Length would be read differently
    upstream.
    """
    if request.content_length is not None and request.content_length > limit:
        raise UnreadableBody(f"{what} body too large")
    codings = {c.strip().lower() for v in request.headers.getall("Content-Encoding", ()) for c in v.split(",")}
    if codings - {"", "identity"}:
        raise UnreadableBody(f"compressed {what} body")
    body = bytearray()
    while chunk := await request.content.read(65536):
        body.extend(chunk)
        if len(body) > limit:
            raise UnreadableBody(f"{what} body too large")
    return bytes(body)


# Possessive quantifiers throughout: `name` and then 100,000 tabs took 14 s to fail to match.
_ANY_BOUNDARY = re.compile(r"boundary\s*+((?:\*\d*+)?+\*?+)\s*+=\s*+(\"[^\"]*+\"|'[^']*+'|[^;,\s]*+)", re.IGNORECASE)
_PART_NAME = re.compile(r"\bname\s*+(\*?+)\s*+=\s*+(\"[^\"]*+\"|'[^']*+'|[^;\s]*+)", re.IGNORECASE)
_HEAD_END = re.compile(r"\r?\n\r?\n")
MAX_PART_HEAD = 64 * 1024  # a part's head, where its name is (Rack 3.1's limit): longer ones are refused
MAX_PARTS = 4096  # parts at one boundary (Rack 3's multipart_total_part_limit): more are refused
MAX_RAW_MENTIONS = 10_000  # the field's letters anywhere in a body, named or not: more is refused
MAX_NAME_PREFIX = 4096  # spaces and brackets before a form field's name: more are refused
# RFC 2046 boundary characters but the space (PHP keeps one after '=') and ',' (Rack stops there).
_PLAIN_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_\-./:=?]{1,70}")
_BOUNDARY_PARAMETER = re.compile(r";[ \t]*+boundary=", re.IGNORECASE)
# What may come before a form field's name where some back end still reads the name alone:
# spaces (PHP drops them), brackets (Rack 2 and qs drop leading '[' and ']'), dots (qs with allowDots,
# as Koa's co-body sets it, reads '.username' as username) and a '?' (formidable drops a leading one),
# raw or encoded. Matched on the text before the name, reversed.
_FORM_PREFIX_REVERSED = re.compile(r"(?:[ +\[\].?]|02%|[bBdD]5%|[eE]2%|[fF]3%)*+")
# ... and what may end it: '=', '[' (an array), ']' (Rack 2), the field's end or a NUL (PHP
# stops there). A JSON key ends at its quote and a colon.
_AFTER_FORM_NAME = re.compile(r"(?:[=\[\]&;\x00]|%(?:3[dD]|5[bBdD]|00|26|3[bB])|$)")
_JSON_KEY = re.compile(r"\"\s*+:")
_FIELD_END = re.compile(r"[&;]")
# In a part's head, any mention not inside a longer name counts (Rack 3 reads `name` after a
# quoted value without ';', the last `name` given, a Content-ID without a name; PHP ends a name
# at NUL): a head whose names this module does not read as the field, where it names it, is refused.
_NAME_CHAR = re.compile(r"[0-9A-Za-z_.]")
# RFC 2047 encoded words, which commons-fileupload decodes anywhere in a part's name (after
# whitespace too): not read here, so refused; and RFC 2231 names in a charset that is not
# ASCII's (Tomcat decodes name*=UTF-16LE''%5F%00...).
_ENCODED_WORD_NAME = re.compile(r"\bname\s*+\*?+\s*+=\s*+(?:\"[^\"\r\n]*?|'[^'\r\n]*?)?=\?", re.IGNORECASE)
# A file's name: a `filename` parameter (lower case: Rack 2.2 reads no other) after a ';', quoted.
_FILENAME = re.compile(r";[ \t]*+filename=\"([^\"\r\n]*+)\"")
_RFC2231_NAME = re.compile(r"\bname\s*+\*\s*+=\s*+[\"']?+([^\"';\s]*+)'", re.IGNORECASE)
# RFC 2231 continuations (name*0="_me"; name*1="thod"): Go joins them, and prefers them to a plain name.
_RFC2231_CONTINUED = re.compile(r"\bname\s*+\*\s*+\d", re.IGNORECASE)
_RFC2231_ASCII = frozenset({"", "utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1"})
_CHARSET = re.compile(r"charset\s*+=\s*+[\"']?+([^\"';,\s]*+)", re.IGNORECASE)
_ASCII = "".join(map(chr, range(128)))
# Escape sequences of stateful encodings (ISO-2022, HZ, UTF-7), then every byte.
_CODEC_PROBE = b"\x1b(B\x1b$B\x1b(J\x0e\x0f~{~}+-\\u0041\\U00000041" + bytes(range(256))  # ... and escapes


def _names_read_as_bytes(charset: str) -> bool:
    """:func:`_codec_names_read_as_bytes` of the codec ``charset`` names (cached by codec, not spelling)."""
    try:
        codec = codecs.lookup(_CHARSET_ALIASES.get(charset.lower(), charset)).name
    except LookupError:
        return False
    return _codec_names_read_as_bytes(codec)


# Charsets Python spells otherwise; and multi-byte ones that never put an ASCII byte inside a character.
_CHARSET_ALIASES = {"windows-874": "cp874"}
_ASCII_SAFE_MULTIBYTE = frozenset({"utf-8", "euc_kr", "euc_jp", "euc_jis_2004", "euc_jisx0213"})
MAX_CHARSETS = 32  # charset parameters in one body's Content-Type and part heads: more are refused


@functools.lru_cache(maxsize=256)
def _codec_names_read_as_bytes(codec: str) -> bool:
    """Whether a body or part declared in ``charset`` spells names as their bytes read as Latin-1 do.

    UTF-8 and stateless single-byte charsets that keep ASCII do (Latin-9, windows-125x, KOI8-R).
    Others do not, and back ends part ways on them: PHP and Rack ignore a charset, Tomcat decodes
    names in it field by field after percent-decoding, Rack 3.1 decodes a part's name in the
    part's own; UTF-16, ISO-2022-JP (escapes vanish inside a name), Shift_JIS, EBCDIC, UTF-7,
    and Python's raw_unicode_escape (aiohttp decodes a part in it: ``\\u0062ob`` is bob).
    """
    if codec in _ASCII_SAFE_MULTIBYTE:
        return True
    try:
        if _ASCII.encode(codec) != _ASCII.encode("ascii"):
            return False
    except (UnicodeError, LookupError):  # LookupError: a bytes-to-bytes codec (base64, zlib, rot13)
        return False
    whole = _CODEC_PROBE.decode(codec, "replace")
    return whole == "".join(bytes([byte]).decode(codec, "replace") for byte in _CODEC_PROBE)


@functools.lru_cache(maxsize=64)
def _mentions(fields: tuple[str, ...]) -> re.Pattern[str]:
    """``field`` written any way a reader may decode it, letters in any case (ASP.NET reads form
    names so): each character raw, %XX, %uXXXX (IIS) or \\u00XX, after an optional backslash (Rack 3
    unescapes quoted names); an ``_`` also as ``.`` or ``[`` (PHP renames them so)."""
    def spellings(c: str) -> str:
        codes = sorted({f"{ord(c.lower()):02x}", f"{ord(c.upper()):02x}"})
        alternatives = [re.escape(c), *(f"%{code}" for code in codes), *(f"%u00{code}" for code in codes)]
        if c == "_":
            alternatives += [r"\.", "%2e", r"\[", "%5b"]
        escapes = "|".join(f"\\\\u00{code}" for code in codes)
        return f"(?:{escapes}|\\\\?+(?:" + "|".join(alternatives) + "))"
    return re.compile("|".join("".join(spellings(c) for c in field) for field in fields), re.IGNORECASE)


def _one_boundary(content_type: str) -> str:
    """A multipart body's boundary, where every back end reads the same one; else :class:`UnreadableBody`.

    Without one Rack reads the body as a form; PHP finds a boundary by a substring search
    (``boundaryx=``, ``boundary; b=``, ``boundary= X``: the first "boundary" must be the
    parameter's name); Laravel reads any type with ``/json`` or ``+json`` in it as JSON.
    """
    _, parameters = media_type(content_type)
    boundary = parameters.get("boundary", "")
    parameter = _BOUNDARY_PARAMETER.search(content_type)
    lowered = content_type.lower()
    if (not _PLAIN_BOUNDARY.fullmatch(boundary) or parameter is None
            or lowered.find("boundary") != parameter.end() - len("boundary=")
            or lowered.count("boundary=") != 1  # Rack's greedy pattern took the last one, PHP the first, cased
            or "/json" in lowered or "+json" in lowered):
        raise UnreadableBody(f"a multipart Content-Type back ends may read apart: {_echo(content_type)}")
    return boundary


_METHOD_NAME = re.compile(r"[A-Z]{1,20}")


def override_methods_of(values: Iterable[str]) -> set[str]:
    """The methods override ``values`` ask for (upper case; empty ones dropped), or :class:`UnreadableBody`
    for a value that is no method name: Rack reads 'DELETE\\0' from a form as DELETE, Express 'LOC\\u212a'
    (a Kelvin sign) as LOCK; what the gateway cannot read as a method, some back end may."""
    methods = {value.strip().upper() for value in values} - {""}
    if any(not _METHOD_NAME.fullmatch(method) for method in methods):
        raise UnreadableBody("a method override that is not a method name")
    return methods


def field_values(body: bytes, content_type: str, *fields: str) -> set[str]:
    """Every value of the ``fields`` that some back end may read in ``body``, whatever the Content-Type says.

    Back ends disagree on what a body is (Rack reads a POST without a Content-Type as a form,
    PHP cuts the type at a comma or a space, Laravel takes any ``/json`` type for JSON), on
    how to decode it (PHP ignores the charset, Tomcat decodes names in it) and on how to
    spell a field (PHP truncates a name at NUL, drops leading spaces and reads ``.`` as
    ``_``, Rack 2 drops leading brackets, ASP.NET ignores case). So the work starts from
    every place the body names the field where some back end reads a name
    (:func:`_mentions`, :class:`_Places`), and reads each as a form field, a JSON key and a
    multipart part; the strictest of what is found is judged. A place no reading accounts for
    is a spelling some back end may read and the gateway cannot: :class:`UnreadableBody`
    (400), as for a charset whose names are not their bytes, a multipart type without one
    plain boundary, or more than :data:`MAX_MENTIONS` named places (the work is bounded by
    the body's size and the caps, never by their product).
    """
    if not content_type.isascii():  # Go lower-cases 'multİpart/form-data' (U+0130) to multipart/form-data
        raise UnreadableBody(f"a Content-Type that is not ASCII: {_echo(content_type)}")
    charsets = {c.lower() for c in _CHARSET.findall(content_type)}
    if len(charsets) > MAX_CHARSETS:
        raise UnreadableBody(f"Content-Type naming more than {MAX_CHARSETS} charsets")
    if unreadable := {c for c in charsets if not _names_read_as_bytes(c)}:
        raise UnreadableBody(f"body in charset {_echo(', '.join(sorted(unreadable)))}")
    multipart = content_type.strip().lower().startswith("multipart/")
    if multipart:
        delimiters = ["--" + _one_boundary(content_type)]
    else:  # no multipart type, but PHP cuts a type at a comma or space: boundaries are still read
        boundaries = {value.strip("\"'").rpartition("'")[2] if star else value.strip("\"'")
                      for star, value in _ANY_BOUNDARY.findall(content_type)} - {""}
        if len(boundaries) > MAX_BOUNDARIES:
            raise UnreadableBody(f"Content-Type naming {len(boundaries)} boundaries")
        delimiters = ["--" + boundary for boundary in sorted(boundaries)]
    return _Places(body, delimiters, multipart).values(fields)


class _Places:
    """A body's text, and where its form fields and multipart part heads are."""

    def __init__(self, body: bytes, delimiters: list[str], multipart: bool) -> None:
        # Node's body-parser drops a leading UTF-8 BOM, PHP and Rack keep it in the first name: read
        # without it (what it hides is found; a name with it is no name to those that keep it).
        self.body = body.removeprefix(b"\xef\xbb\xbf")
        self.text = self.body.decode("latin-1")
        self.multipart = multipart
        self.delimiters = delimiters
        self._parts_of: dict[str, list[tuple[int, int, tuple[int, ...], int]]] = {}

    def parts(self, delimiter: str) -> list[tuple[int, int, tuple[int, ...], int]]:
        """The parts at ``delimiter`` as (head start, head end, content starts, part end), found once when
        first asked for. Readers end a head differently (:func:`_head_ends`): the head searched runs to
        the last of their ends, and a value is read after each. A head with no end within
        MAX_PART_HEAD runs to its part's end, and is refused if it names the field."""
        if delimiter not in self._parts_of:
            self._parts_of[delimiter] = self._find_parts(delimiter)
        return self._parts_of[delimiter]

    def _find_parts(self, delimiter: str) -> list[tuple[int, int, tuple[int, ...], int]]:
        # A delimiter begins a line (RFC 2046; PHP and commons-fileupload split parts only there). One
        # anywhere else is refused: Rack 2.2 ends a part at a delimiter inside a line and opens one at
        # a line of spaces or tabs and the delimiter; commons-fileupload takes the first one anywhere.
        text = self.text
        starts: list[int] = []
        at = text.find(delimiter)
        while at >= 0:
            if at and text[at - 1] != "\n":
                raise UnreadableBody("a multipart delimiter inside a line (back ends split there or not)")
            if len(starts) >= MAX_PARTS:
                raise UnreadableBody(f"more than {MAX_PARTS} multipart parts")
            starts.append(at + len(delimiter))
            at = text.find(delimiter, at + len(delimiter))
        parts = []
        for index, start in enumerate(starts):
            end = starts[index + 1] - len(delimiter) if index + 1 < len(starts) else len(text)
            if not text.startswith("--", start) and text.find("\r\n\r\n", start, min(end, start + MAX_PART_HEAD)) < 0:
                # Rack ends a head only at CRLF CRLF and reads on past the next delimiter to find one.
                raise UnreadableBody("a multipart part whose head has no CRLF CRLF within it")
            ends = _head_ends(text, start, end)
            # No end within MAX_PART_HEAD: the head runs to the part's end (refused if it names the field).
            parts.append((start, max(ends)[0] if ends else end, tuple(sorted({e[1] for e in ends})), end))
        return parts

    def _part_at(self, at: int, delimiter: str) -> int | None:
        """The index of the part whose head holds ``at``, if any."""
        parts = self.parts(delimiter)
        index = bisect.bisect_right(parts, (at, len(self.text) + 1)) - 1
        if index >= 0 and parts[index][0] <= at < parts[index][1]:
            return index
        return None

    def _field_start(self, at: int) -> int | None:
        """Where the form field whose name may begin at ``at`` starts (only spaces and brackets between), if it does."""
        text = self.text
        for size in (64, MAX_NAME_PREFIX):
            low = max(0, at - size)
            before = text[low:at][::-1]  # short: a regex cannot run backwards
            found = _FORM_PREFIX_REVERSED.match(before)
            run = found.end() if found else 0
            if low == 0 or run < len(before) - 2:
                start = at - run
                return start if start == 0 or text[start - 1] in "&;" else None
        raise UnreadableBody(f"over {MAX_NAME_PREFIX} spaces or brackets before a field's name")

    def _json_key(self, at: int, end: int) -> bool:
        """Whether the mention is a key of the JSON the body is, or seems to be (not JSON-like text in a form
        or a file). A key in a body that seems JSON but Python does not parse (nested too deep, a byte that
        is not UTF-8: Node's JSON.parse reads both) is one no reading accounts for: the body is refused."""
        return (self.text[at - 1:at] == '"' and _JSON_KEY.match(self.text, end) is not None
                and (self.json_pairs is not None or self.text.lstrip(" \t\r\n")[:1] in ("{", "[")))

    @functools.cached_property
    def json_pairs(self) -> list[tuple[str, str]] | None:
        """Every (key, string value) at any depth, if the body is UTF-8 JSON (Laravel's json_decode reads
        nothing else; Python's parser, integers too long for its int() kept as text, reads at least as much)."""
        try:
            text = self.body.decode("utf-8")
            try:
                document = json.loads(text)
            except ValueError as exc:
                if "digits" not in str(exc):  # Python's int() limit: PHP reads a long integer
                    raise
                document = json.loads(text, parse_int=str)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
        # A key given twice keeps its last value, in Python's dicts as in PHP's json_decode.
        pairs, stack = [], [document]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                pairs += [(key, value) for key, value in item.items() if isinstance(value, str)]
                stack += [value for value in item.values() if isinstance(value, (dict, list))]
            elif isinstance(item, list):
                stack += [value for value in item if isinstance(value, (dict, list))]
        return pairs
    def _named(self, at: int, end: int) -> bool:
        """Whether the mention ``text[at:end]`` stands where some back end reads it as a whole field name."""
        text = self.text
        if self.multipart:
            # In a part's head, unless inside a longer name (`payment_method`, `_method_id`,
            # `_method.txt`, `contact[delivery][method]`; not `]_method`: Rack 2 drops leading brackets).
            before = at
            while before > 0 and text[before - 1] in "[]":
                before -= 1
            if _NAME_CHAR.match(text, end) or (before > 0 and _NAME_CHAR.match(text, before - 1)):
                return False
            for delimiter in self.delimiters:
                if (index := self._part_at(at, delimiter)) is not None:
                    # Not in a file's name (`Site 4 [Method Statement].pdf`): a file part's value is
                    # the file to every back end, never a method. A file name with ';' or '=' in it is
                    # searched: Rack 2.2 takes the last `name=` on the line, quotes or not, and Tomcat
                    # ends the quotes of `a="x; filename="` early and trims `name =_method` to a name.
                    start, head_end, _, _ = self.parts(delimiter)[index]
                    return not any(found.start(1) <= at < found.end(1) and not {";", "="} & set(found.group(1))
                                   for found in _FILENAME.finditer(text, start, head_end))
            return False
        if _AFTER_FORM_NAME.match(text, end) and self._field_start(at) is not None:
            return True
        return self._json_key(at, end)

    def values(self, fields: tuple[str, ...]) -> set[str]:
        """The values found, each named place accounted for by a reading at that place (else refused)."""
        if self.multipart:
            self._refuse_unread_heads()
        field = " or ".join(repr(f) for f in fields)  # for messages
        pattern = _mentions(fields)
        mentions: Iterable[re.Match[str]] = (
            itertools.chain.from_iterable(pattern.finditer(self.text, start, head_end)
                                          for delimiter in self.delimiters
                                          for start, head_end, _, _ in self.parts(delimiter))
            if self.multipart  # only a part's head names it: an upload's content is not searched
            else pattern.finditer(self.text))
        raw = [(m.start(), m.end()) for m in itertools.islice(mentions, MAX_RAW_MENTIONS + 1)]
        if len(raw) > MAX_RAW_MENTIONS:
            raise UnreadableBody(f"body naming {field} more than {MAX_RAW_MENTIONS} times")
        places = [(at, end) for at, end in raw if self._named(at, end)]
        if not places:
            return set()
        if len(places) > MAX_MENTIONS:
            raise UnreadableBody(f"body naming {field} more than {MAX_MENTIONS} times")
        wanted = {f.lower() for f in fields}
        tails = {f.lower()[-6:] for f in fields}  # PHP's renaming keeps a name's letters: a cheap first look

        def same(name: str) -> bool:
            lowered = name.lower()
            return any(tail in lowered for tail in tails) and reads_as(name, wanted)

        found: set[str] = set()
        accounted: set[int] = set()
        readings = [self._form_values(places, same), *(self._part_values(places, d, same) for d in self.delimiters)]
        for values, at_places in readings:
            found |= set(values)
            accounted |= at_places
        if not self.multipart and (pairs := self.json_pairs):
            found |= {value for key, value in pairs if same(key)}
            accounted |= {at for at, end in places if self._json_key(at, end)}
        if any(at not in accounted for at, _ in places):
            raise UnreadableBody(f"{field} written where it cannot be read one way")
        return found

    def _refuse_unread_heads(self) -> None:
        """Part heads this module cannot read names in: RFC 2047 words, RFC 2231 in another charset than
        ASCII's, or a part charset whose names are not their bytes (Rack 3.1 decodes a name in it)."""
        text, charsets = self.text, set[str]()
        for delimiter in self.delimiters:
            for start, head_end, _, _ in self.parts(delimiter):
                head_end = min(head_end, start + MAX_PART_HEAD + 4)  # a longer head naming the field is refused
                if _ENCODED_WORD_NAME.search(text, start, head_end):
                    raise UnreadableBody("a part named with an RFC 2047 encoded word")
                if _RFC2231_CONTINUED.search(text, start, head_end):
                    raise UnreadableBody("a part named in RFC 2231 continuations")
                for found in _RFC2231_NAME.finditer(text, start, head_end):
                    if found.group(1).lower() not in _RFC2231_ASCII:
                        raise UnreadableBody("a part named in an RFC 2231 charset the gateway does not read")
                if "harset" in text[start:head_end].lower():  # CHARSET= too
                    charsets.update(c.lower() for c in _CHARSET.findall(text, start, head_end))
                    if len(charsets) > MAX_CHARSETS:
                        raise UnreadableBody(f"parts naming more than {MAX_CHARSETS} charsets")
        if not all(_names_read_as_bytes(c) for c in charsets):
            raise UnreadableBody("a part in a charset the gateway does not read")

    def _form_values(self, places: list[tuple[int, int]], same: Callable[[str], bool]) -> tuple[list[str], set[int]]:
        """The values of the form fields (split at ``&`` and ``;``) named the field, and the places they account for."""
        text, values, accounted = self.text, [], set()
        fields: dict[int, list[int]] = {}
        for at, end in places:
            if self.multipart or not _AFTER_FORM_NAME.match(text, end):
                continue
            if (start := self._field_start(at)) is not None:
                fields.setdefault(start, []).append(at)
        for start, at_places in sorted(fields.items()):
            end_of_field = _FIELD_END.search(text, start)
            named = [value for name, value in parse_qsl(text[start:end_of_field.start() if end_of_field else len(text)],
                                                        keep_blank_values=True) if same(name)]
            if named:
                values += named
                accounted.update(at_places)
        return values, accounted

    def _part_values(self, places: list[tuple[int, int]], delimiter: str,
                     same: Callable[[str], bool]) -> tuple[list[str], set[int]]:
        """The contents of the parts whose head names the field, and the places in those heads."""
        text, parts, values, accounted = self.text, self.parts(delimiter), [], set()
        heads: dict[int, list[int]] = {}
        for at, _ in places:
            if (index := self._part_at(at, delimiter)) is not None:
                heads.setdefault(index, []).append(at)
        for index, at_places in sorted(heads.items()):
            start, head_end, content_starts, end = parts[index]
            if head_end - start > MAX_PART_HEAD or not content_starts:
                raise UnreadableBody(f"a multipart part's head over {MAX_PART_HEAD} bytes")
            head = text[start:head_end]
            for star, name in _PART_NAME.findall(head):
                name = name.strip("\"'")
                if star:
                    name = unquote(name.rpartition("'")[2])
                if same(name):  # its value as each reader ends the head
                    values += [text[content:end].strip("\r\n") for content in content_starts]
                    accounted.update(at_places)
        return values, accounted


def _head_ends(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Where back ends end the head of the part at ``start`` (head end, content start), within MAX_PART_HEAD.

    All start after the delimiter's line. Rack ends it at the first CRLF CRLF (an empty first
    line included); commons-fileupload (and Tomcat's copy) at the first its matcher sees, which
    misses one right after a CR (its state resets without the byte read again); PHP at the first
    blank line, bare LFs allowed.
    """
    line_end = text.find("\n", start, end)
    if line_end < 0:
        return []
    first, bound = line_end + 1, min(end, line_end + 1 + MAX_PART_HEAD + 4)
    ends = []
    rack = text.find("\r\n\r\n", first, bound)
    if rack >= 0:
        ends.append((rack + 2, rack + 4))
        fileupload = rack
        while fileupload > first and text[fileupload - 1] == "\r":
            fileupload = text.find("\r\n\r\n", fileupload + 2, bound)
            if fileupload < 0:
                break
        if fileupload >= 0:
            ends.append((fileupload + 2, fileupload + 4))
    if text.startswith(("\r\n", "\n"), first):
        ends.append((first, first + (2 if text.startswith("\r\n", first) else 1)))  # PHP: an empty first line
    elif php := _HEAD_END.search(text, first, bound):
        ends.append((php.start(), php.end()))
    return ends
