"""Login bodies other readers read as another user: the gateway reads the one username they all read, or refuses.

Review round 11 ran each DIFFERENTIALS body through real parsers (PHP 8.2, Laravel 8.83, Rack 2.2 and
Rails 6.1, Django 5.2, Werkzeug 3.1, Starlette 1.10, Go 1.19, commons-fileupload 1.4, Perl CGI.pm 4.55,
aiohttp; ASP.NET Core from its source): the gateway's one reading of the body (Python's MIME parser,
``parse_qsl``, ``json``) took "alice" (an exempt user, say) where the framework named logs in "bob"
with bob's own password. :func:`gateway.forms.login_username` must refuse each (400
``request.bad_login``). ORDINARY bodies (browsers, curl, mobile and JSON clients) must still be read.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway.forms import UnreadableBody, login_username

FIELD = "username"
FORM = "application/x-www-form-urlencoded"
B = "B0undary"
MP = f"multipart/form-data; boundary={B}"


def part(head: str, content: str, eol: str = "\r\n") -> bytes:
    return f"--{B}{eol}{head}{eol}{eol}{content}{eol}".encode()


def cd(name: str) -> str:
    return f'Content-Disposition: form-data; name="{name}"'


END = f"--{B}--\r\n".encode()
ALICE = part(cd("username"), "alice")
PW = part(cd("password"), "pw")


@dataclass(frozen=True)
class Differential:
    description: str
    content_type: str | None
    body: bytes
    query: str
    oracle: str  # who reads bob: framework, version, and the call that reads it


DIFFERENTIALS = [
    # ---- multipart: the head of a part -----------------------------------------------------------
    Differential("multipart: two name= parameters in one Content-Disposition (gateway: first; everyone else: last)",
                 MP, ALICE + part('Content-Disposition: form-data; name="x"; name="username"', "bob") + PW + END, "",
                 "PHP 8.2 $_POST, Laravel 8.83 input(), Rack 2.2.22 POST / Rails 6.1 params, "
                 "Django 5.2 request.POST, "
                 "Starlette 1.10 + python-multipart 0.0.34 form; bob-part first: Werkzeug 3.1 form, "
                 "commons-fileupload 1.4"),
    Differential("multipart: two Content-Disposition headers in one part (gateway: first; "
                 "Django/Starlette/CGI.pm: last)",
                 MP, ALICE + part(cd("x") + "\r\n" + cd("username"), "bob") + PW + END, "",
                 "Django 5.2 request.POST, Starlette 1.10 form, Perl CGI.pm 4.55 param()"),
    Differential("multipart: name*= (RFC 2231) beside a plain name= (gateway: name; others: name*)",
                 MP, part("Content-Disposition: form-data; name=\"x\"; name*=utf-8''username", "bob")
                 + ALICE + PW + END, "",
                 "aiohttp 3 request.post() (the demo CRM), Werkzeug 3.1 form, Go 1.19 net/http FormValue; "
                 "bob-part last: Django 5.2 request.POST"),
    Differential("multipart: name*0/name*1 (RFC 2231 continuations) beside a plain name=",
                 MP, part('Content-Disposition: form-data; name="x"; name*0="user"; name*1="name"', "bob")
                 + ALICE + PW + END, "",
                 "Werkzeug 3.1 form, Go 1.19 FormValue (first value); bob-part last: Django 5.2"),
    Differential("multipart: a part head starting with a line that is not a header (email: the head is empty)",
                 MP, ALICE + part("garbage\r\n" + cd("username"), "bob") + PW + END, "",
                 "PHP 8.2 $_POST, Rack 2.2.22 POST / Rails 6.1 params, Django 5.2 request.POST; "
                 "bob-part first: Werkzeug 3.1 form, commons-fileupload 1.4"),
    Differential("multipart: a part head starting with whitespace (email: a continuation line, no header)",
                 MP, ALICE + part(" " + cd("username"), "bob") + PW + END, "",
                 "Rack 2.2.22 POST / Rails 6.1, Django 5.2; bob-part first: Werkzeug 3.1, commons-fileupload 1.4"),
    Differential("multipart: a bare CR inside a part head (email splits lines at CR)",
                 MP, ALICE + part(cd("x") + "\r" + cd("username"), "bob") + PW + END, "",
                 "PHP 8.2 $_POST, Django 5.2 request.POST"),
    Differential("multipart: a bare LF inside a part head",
                 MP, ALICE + part(cd("x") + "\n" + cd("username"), "bob") + PW + END, "",
                 "Django 5.2 request.POST, Starlette 1.10 form"),
    Differential("multipart: a part head ended by LF LF (Rack reads on to the next CRLF CRLF)",
                 MP, f"--{B}\r\n{cd('username')}\n\nalice\r\n".encode() + part(cd("x"), "bob") + PW + END, "",
                 "Rack 2.2.22 POST / Rails 6.1 params"),
    Differential("multipart: 'Content-Disposition :' (space before the colon) and a second part",
                 MP, part("Content-Disposition : form-data; name=\"username\"", "bob") + ALICE + PW + END, "",
                 "Werkzeug 3.1 form, commons-fileupload 1.4 (first value)"),
    # ---- multipart: part names the gateway does not read as the field ----------------------------
    Differential("multipart: NUL in a part name (PHP stops at NUL: username\\0x is username)",
                 MP, ALICE + part(cd("username\0x"), "bob") + PW + END, "",
                 "PHP 8.2 $_POST, Laravel 8.83 input()"),
    Differential("multipart: a single-quoted part name (PHP unquotes '...')",
                 MP, ALICE + part("Content-Disposition: form-data; name='username'", "bob") + PW + END, "",
                 "PHP 8.2 $_POST"),
    Differential("multipart: brackets around a part name (Rack drops leading [ ] and trailing ])",
                 MP, ALICE + part(cd("username]"), "bob") + PW + END, "",
                 "Rack 2.2.22 POST / Rails 6.1 params (also [username, ]username, [username])"),
    Differential("multipart: name=... inside a quoted name (Rack's regex takes the last '; name=' on the line)",
                 MP, ALICE + part('Content-Disposition: form-data; name="x; name=username"', "bob") + PW + END, "",
                 "Rack 2.2.22 POST / Rails 6.1 params"),
    Differential("multipart: whitespace/control characters around a part name (trimmed by Java and Django)",
                 MP, part(cd("username\t"), "bob") + ALICE + PW + END, "",
                 "commons-fileupload 1.4 (String.trim: any char <= 0x20, either end; first value); "
                 "Django 5.2 strips \\t \\v \\f and space (bob-part last)"),
    # ---- multipart: framing --------------------------------------------------------------------------
    Differential("multipart: a delimiter in the middle of a line (Django splits there)",
                 MP, ALICE + part(cd("x"), f"junk--{B}\r\n{cd('username')}\r\n\r\nbob") + PW + END, "",
                 "Django 5.2 request.POST"),
    Differential("multipart: a delimiter followed by other characters (--B0undaryx)",
                 MP, ALICE + part(cd("x"), f"junk\r\n--{B}x\r\n{cd('username')}\r\n\r\nbob") + PW + END, "",
                 "Django 5.2 request.POST"),
    Differential("multipart: parts after the closing delimiter (email: epilogue)",
                 MP, ALICE + PW + END + part(cd("username"), "bob") + END, "",
                 "PHP 8.2 $_POST, Laravel 8.83 input(), Django 5.2 request.POST"),
    Differential("multipart: a first delimiter not at the start of a line (email: preamble)",
                 MP, f"junk--{B}\r\n{cd('username')}\r\n\r\nbob\r\n".encode() + ALICE + PW + END, "",
                 "Werkzeug 3.1 form, commons-fileupload 1.4, Perl CGI.pm 4.55 (first value); "
                 "also '  --B0undary' indented"),
    # ---- url-encoded -------------------------------------------------------------------------------
    Differential("form: NUL in a field name (PHP stops at NUL)",
                 FORM, b"username=alice&username%00x=bob&password=pw", "",
                 "PHP 8.2 $_POST / $_REQUEST, Laravel 8.83 input()"),
    Differential("form: brackets around a field name (Rack 2.2 drops leading [ ] and trailing ])",
                 FORM, b"username=alice&username%5D=bob&password=pw", "",
                 "Rack 2.2.22 POST / Rails 6.1 params (also [username], %5Busername, %5Dusername)"),
    Differential("form: ';' as a separator in the body",
                 FORM, b"x;username=bob&username=alice&password=pw", "",
                 "Perl CGI.pm 4.55 param() (first value); Django < 3.2, Python cgi < 3.9.2, Go < 1.17"),
    Differential("form: IIS-style %uXXXX escapes in a field name",
                 FORM, b"%u0075sername=bob&username=alice&password=pw", "",
                 "Perl CGI.pm 4.55 param() (first value); ASP.NET (System.Web) decodes %u too"),
    Differential("form: the same field in another case (ASP.NET reads form names case-insensitively)",
                 FORM, b"USERNAME=bob&username=alice&password=pw", "",
                 "ASP.NET Core model binding (FormReader/KeyValueAccumulator: OrdinalIgnoreCase, "
                 "FirstValue) - from source, NOT executed here; also gateway.forms.reads_as says so"),
    Differential("form body that is also JSON, under a form Content-Type whose boundary contains '/json'",
                 FORM + '; boundary="/json"', b'{"username":"bob","password":"pw","x":"&username=alice&"}', "",
                 "Laravel 8.83 input() (isJson: Content-Type contains '/json' or '+json'; "
                 "also '; boundary=x+json')"),
    # ---- query string ----------------------------------------------------------------------------------
    Differential("query: ';' separator (Rack 2.2 splits GET at & and ;) - Rails params prefer the query",
                 FORM, b"username=alice&password=pw", "x;username=bob",
                 "Rails 6.1 ActionDispatch params (query over body) on Rack 2.2.22"),
    Differential("query: brackets around the name (Rack drops them) - Rails params prefer the query",
                 FORM, b"username=alice&password=pw", "username]=bob",
                 "Rails 6.1 ActionDispatch params on Rack 2.2.22 (also [username]=, also with JSON bodies)"),
    Differential("query with a JSON body: ';' separator (Rails merges the query over JSON params too)",
                 "application/json", b'{"username":"alice","password":"pw"}', "x;username=bob",
                 "Rails 6.1 ActionDispatch params on Rack 2.2.22"),
    # ---- JSON ----------------------------------------------------------------------------------------
    Differential("JSON: the key in another case (Go encoding/json matches keys case-insensitively, last wins)",
                 "application/json", b'{"username":"alice","USERNAME":"bob","password":"pw"}', "",
                 "Go 1.19 encoding/json into struct{Username string `json:\"username\"`}; "
                 "ASP.NET Core System.Text.Json web defaults (PropertyNameCaseInsensitive) - not executed"),
    Differential("JSON: a key with U+017F LONG S (Unicode case folding: u\u017fername == username)",
                 "application/json", '{"username":"alice","u\u017fername":"bob","password":"pw"}'.encode(), "",
                 "Go 1.19 encoding/json (also escaped as \\u017f)"),
    # ---- found while fixing the above ---------------------------------------------------------------
    Differential("multipart: the same part name in upper case", MP, ALICE + part(cd("USERNAME"), "bob") + PW + END, "",
                 "ASP.NET Core (form keys compared OrdinalIgnoreCase)"),
    Differential("multipart: a base64 part (the gateway's MIME parser decoded it)", MP,
                 part(cd("username") + "\r\nContent-Transfer-Encoding: base64", "YWxpY2U=") + PW + END, "",
                 "PHP, Rack, Werkzeug, Go: the part's text (YWxpY2U=), not alice"),
    Differential("JSON: the username again deeper down", "application/json",
                 b'{"username": "alice", "user": {"username": "bob"}, "password": "pw"}', "",
                 "a CRM reading a nested user object"),
    Differential("multipart: a part named with a long s in UTF-8 beside the field (round 12)", MP,
                 ALICE + part(cd("u\u017fername"), "bob") + PW + END, "",
                 "ASP.NET Core's case-blind form collection as `folded` models it (not run here); "
                 "refused in forms and JSON already"),
    # Round 15, Java: Jetty 12 decodes the other parts in the charset a `_charset_` part names; in IBM290
    # the bytes `cwc` are bob.
    Differential("multipart: a `_charset_` part naming IBM290", MP,
                 part(cd("_charset_"), "IBM290") + part(cd("username"), "cwc") + PW + END, "",
                 "Jetty 12.0 ee10 getParameter and Spring Security's obtainUsername: bob"),
    Differential("form: a `_charset_` field naming IBM290", FORM, b"_charset_=IBM290&username=cwc&password=pw", "",
                 "Jetty (the HTML5 `_charset_` field; not run for forms: refused alike)"),
    # Round 14, Node: Koa's co-body parses forms with qs allowDots ('.username' is username) and stops
    # at qs's 1000th field; body-parser and co-body drop a leading BOM; formidable 3 a leading '?'.
    Differential("form: '.username' first, the gateway's username past qs's 1000 fields", FORM,
                 b".username=bob&password=pw&" + b"".join(b"a%d=&" % i for i in range(998)) + b"username=alice",
                 "", "koa-body 8.0 / @koa/bodyparser 6.1 / koa-bodyparser 4.4 (co-body 6.2), passport-local"),
    Differential("form: '.username' and a field qs splits at ']='", FORM,
                 b".username=bob&password=pw&username=alice]=x", "", "Koa (co-body)"),
    Differential("form: '%2Eusername'", FORM, b"%2Eusername=bob&password=pw&username=alice]=x", "",
                 "Koa (co-body)"),
    Differential("form: after a UTF-8 BOM", FORM, b"\xef\xbb\xbfusername=bob&password=pw&username=alice]=x", "",
                 "Express 5 / body-parser 2.4, Express 4 / body-parser 1.x, Koa (co-body)"),
    Differential("form: a leading '?'", FORM, b"?username=bob&password=pw&username=alice", "",
                 "formidable 3.5 (fields.username[0] is bob)"),
    # Round 13 (against round 12's relaxations).
    Differential("multipart: the username part in Python's raw_unicode_escape (\\u0062ob)", MP,
                 part(cd("username") + "\r\nContent-Type: text/plain; charset=raw_unicode_escape", "\\u0062ob") + PW
                 + END, "", "aiohttp 3.14 request.post() (the demo CRM: end to end, bob logged in)"),
    Differential("multipart: the username part is a file named bob", MP,
                 part('Content-Disposition: form-data; name="username"; filename="bob"', "alice") + PW + END, "",
                 "Perl CGI.pm 4.55 param('username'): the file's name"),
    Differential("form: a field name with a dotless i folding to the field (field 'login_id')", FORM,
                 "login_id=alice&login_\u0131d=bob&password=pw".encode(), "",
                 "ASP.NET Core (OrdinalIgnoreCase upper-cases \u0131 to I)"),
]


@pytest.mark.parametrize("case", DIFFERENTIALS, ids=[c.description for c in DIFFERENTIALS])
def test_a_body_other_readers_read_as_another_user_is_refused(case: Differential) -> None:
    field = "login_id" if "login_id" in case.description else FIELD
    with pytest.raises(UnreadableBody):
        login_username(case.body, case.content_type or "", field, case.query)


def curl_multipart(*fields: tuple[str, str], boundary: str = "------------------------d74496d66958873e") -> bytes:
    out = b""
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return out + f"--{boundary}--\r\n".encode()


# ---- Dart / Flutter package:http MultipartRequest (pkgs/http/lib/src/multipart_request.dart) -----------------
# A field whose value is not plain ASCII gets `content-type: text/plain; charset=utf-8` and
# `content-transfer-encoding: binary` lines; header names are lower case; the boundary is
# 'dart-http-boundary-' + 51 characters of [+_\-.0-9A-Za-z].
DART_B = "dart-http-boundary-" + "aB3.-_+x9Zq" * 4 + "K7m2p1r"
assert len(DART_B) == 70


def dart(fields: list[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in fields:
        head = f'content-disposition: form-data; name="{name}"'
        if not value.isascii():
            head += "\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-transfer-encoding: binary"
        out += f"--{DART_B}\r\n{head}\r\n\r\n".encode() + value.encode() + b"\r\n"
    return out + f"--{DART_B}--\r\n".encode()


# ---- .NET HttpClient: MultipartFormDataContent.Add(new StringContent(v), name) ---------------------------------
# ContentDispositionHeaderValue.Name = EncodeAndQuoteMime(name): a token is written unquoted (name=username);
# StringContent adds `Content-Type: text/plain; charset=utf-8`; MultipartContent quotes its Guid boundary in
# the Content-Type (boundary="...") and writes --boundary CRLF, headers, CRLF, content, CRLF --boundary-- CRLF.
NET_B = "6f1b9c8e-3a0e-4c77-9d0a-2a7c1b9f3e11"


def dotnet(fields: list[tuple[str, str]]) -> bytes:
    parts = [f"--{NET_B}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Disposition: form-data; name={name}"
             f"\r\n\r\n".encode() + value.encode() + b"\r\n" for name, value in fields]
    return b"".join(parts) + f"--{NET_B}--\r\n".encode()


# ---- Apache HttpClient 4.x httpmime: MultipartEntityBuilder.create().addTextBody(name, value) --------------------
# FormBodyPartBuilder.build() adds Content-Type (ContentType.DEFAULT_TEXT: text/plain; charset=ISO-8859-1) and
# Content-Transfer-Encoding (8bit); the default mode, STRICT (HttpStrictMultipart), writes every header field.
APACHE_B = "Xk2_0rZ-pQ9wLm4tYv7bN1cE8sH3jD6gF"


def apache(fields: list[tuple[str, str]]) -> bytes:
    parts = [f'--{APACHE_B}\r\nContent-Disposition: form-data; name="{name}"\r\nContent-Type: text/plain; '
             f"charset=ISO-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".encode() + value.encode("latin-1")
             + b"\r\n" for name, value in fields]
    return b"".join(parts) + f"--{APACHE_B}--\r\n".encode()


CHROME = "----WebKitFormBoundary7MA4YWxkTrZu0gW"
FIREFOX = "---------------------------40348290341234567890123456"
OKHTTP = "3f8d2b6e-6c4c-4d3a-9f6a-1f3a8e6b2c11"

ORDINARY = [
    ("browser form", "application/x-www-form-urlencoded", b"username=alice&password=pw", "alice"),
    ("browser form with csrf, next and remember-me", "application/x-www-form-urlencoded",
     b"csrf_token=abc123&username=alice&password=p%40ss+w0rd&remember_me=on&next=%2Fdashboard", "alice"),
    ("form, charset=UTF-8 (jQuery)", "application/x-www-form-urlencoded; charset=UTF-8",
     b"username=alice&password=pw", "alice"),
    ("form, e-mail as username", "application/x-www-form-urlencoded",
     b"username=alice%40example.com&password=pw", "alice@example.com"),
    ("form, non-ASCII username", "application/x-www-form-urlencoded",
     b"username=J%C3%BCrgen&password=pw", "jürgen"),
    ("curl -d (form, no charset)", "application/x-www-form-urlencoded", b"username=alice&password=pw", "alice"),
    ("no Content-Type", None, b"username=alice&password=pw", "alice"),
    ("curl -F", "multipart/form-data; boundary=------------------------d74496d66958873e",
     curl_multipart(("username", "alice"), ("password", "pw")), "alice"),
    ("Chrome multipart", f"multipart/form-data; boundary={CHROME}",
     curl_multipart(("username", "alice"), ("password", "pw"), ("next", "/x"), boundary=CHROME), "alice"),
    ("Firefox multipart", f"multipart/form-data; boundary={FIREFOX}",
     curl_multipart(("username", "alice"), ("password", "pw"), boundary=FIREFOX), "alice"),
    ("OkHttp multipart (Content-Length in each part)", f"multipart/form-data; boundary={OKHTTP}",
     (f'--{OKHTTP}\r\nContent-Disposition: form-data; name="username"\r\nContent-Length: 5\r\n\r\nalice\r\n'
      f'--{OKHTTP}\r\nContent-Disposition: form-data; name="password"\r\nContent-Length: 2\r\n\r\npw\r\n'
      f"--{OKHTTP}--\r\n").encode(), "alice"),
    ("python-requests multipart (files=)", "multipart/form-data; boundary=3b5c0a9f2e4d4e1b8c7a6d5e4f3a2b1c",
     curl_multipart(("username", "alice"), ("password", "pw"), boundary="3b5c0a9f2e4d4e1b8c7a6d5e4f3a2b1c"), "alice"),
    ("multipart with a text/plain; charset=utf-8 part", MP,
     part(cd("username") + "\r\nContent-Type: text/plain; charset=utf-8", "alice") + PW + END, "alice"),
    ("fetch/axios JSON", "application/json", b'{"username":"alice","password":"pw"}', "alice"),
    ("axios JSON with charset", "application/json;charset=UTF-8", b'{"username":"alice","password":"pw"}', "alice"),
    ("JSON with nested device info and a remember flag", "application/json",
     b'{"username":"alice","password":"pw","remember":true,"device":{"os":"iOS","version":"17.2"}}', "alice"),
    ("mobile app vendor +json", "application/vnd.acme.login+json", b'{"username": "alice", "password": "pw"}', "alice"),
    ("pretty-printed JSON", "application/json", b'{\n  "username": "alice",\n  "password": "pw"\n}\n', "alice"),
    ("JSON with an escaped non-ASCII username", "application/json",
     b'{"username":"J\\u00fcrgen","password":"pw"}', "jürgen"),
    ("form, raw UTF-8 (as some apps send it)", FORM, "username=jürgen&password=demo".encode(), "jürgen"),
    ("form, a password naming the field", FORM, b"username=Jim+&password=user%26name%3Dbob", "jim"),
    ("JSON, a password naming the field", "application/json",
     b'{"username": "jim", "password": "username=bob"}', "jim"),
    ("multipart, a raw UTF-8 username", MP, part(cd("username"), "jürgen") + PW + END, "jürgen"),
    # Round 12: what Dart's http, .NET's HttpClient and Apache HttpClient 4.x send (from their sources).
    ("Dart http, a non-ASCII password (content-transfer-encoding: binary)", f"multipart/form-data; boundary={DART_B}",
     dart([("username", "alice"), ("password", "pässwörd")]), "alice"),
    ("Dart http, a non-ASCII username", f"multipart/form-data; boundary={DART_B}",
     dart([("username", "józef"), ("password", "pw")]), "józef"),
    (".NET HttpClient (name=username unquoted, a quoted boundary)", f'multipart/form-data; boundary="{NET_B}"',
     dotnet([("username", "alice"), ("password", "pw")]), "alice"),
    ("Apache HttpClient 4.x (charset=ISO-8859-1, Content-Transfer-Encoding: 8bit)",
     f"multipart/form-data; boundary={APACHE_B}", apache([("username", "alice"), ("password", "pw")]), "alice"),
    # Round 15: Apache HttpClient 5 declares ISO-8859-1 on the request (read alike while the name is ASCII).
    ("Apache HttpClient 5 UrlEncodedFormEntity", "application/x-www-form-urlencoded; charset=ISO-8859-1",
     b"username=bob&password=s3cret", "bob"),
    ("Apache HttpClient 5 MultipartEntityBuilder", "multipart/form-data; charset=ISO-8859-1; boundary=hc5Bound4ry",
     b'--hc5Bound4ry\r\nContent-Disposition: form-data; name="username"\r\n'
     b"Content-Type: text/plain; charset=ISO-8859-1\r\n\r\nbob\r\n"
     b'--hc5Bound4ry\r\nContent-Disposition: form-data; name="password"\r\n'
     b"Content-Type: text/plain; charset=ISO-8859-1\r\n\r\ns3cret\r\n--hc5Bound4ry--\r\n", "bob"),
    ("multipart with a file", MP,
     ALICE + part(cd("avatar")[:-1] + '"; filename="username.png"\r\nContent-Type: image/png', "\x89PNG username=bob")
     + END, "alice"),
]


@pytest.mark.parametrize("char", ["\ufeff", "\u200b", "\u00ad", "\u2060"],
                         ids=["BOM", "zero-width space", "soft hyphen", "word joiner"])
@pytest.mark.parametrize(("content_type", "shape"), [
    (FORM, "username={}bob&password=pw"), ("application/json", '{{"username": "{}bob", "password": "pw"}}'),
], ids=["form", "JSON"])
def test_a_username_with_a_format_character_is_refused(char: str, content_type: str, shape: str) -> None:
    """Round 16: Hapi with Joi's trim(), express-validator's trim() and JavaScript's trim() drop U+FEFF,
    MySQL's _ci collations ignore zero-width characters: the CRM logs in bob, the gateway judged another name."""
    with pytest.raises(UnreadableBody):
        login_username(shape.format(char).encode(), content_type, FIELD)


def test_a_non_ascii_username_in_a_latin1_body_is_refused() -> None:
    """ISO-8859-1 on the body: Tomcat reads `jos%C3%A9` as josÃ©, the gateway as josé (two names)."""
    with pytest.raises(UnreadableBody):
        login_username(b"username=jos%C3%A9&password=pw", f"{FORM}; charset=ISO-8859-1", FIELD)


@pytest.mark.parametrize("charset", ["base64", "zlib", "rot13", "hex", "quoted-printable"])
def test_a_part_charset_that_is_no_text_encoding_is_refused_not_a_crash(charset: str) -> None:
    """Round 13: Python's bytes-to-bytes codecs raised LookupError (a 500 and a traceback per request)."""
    body = part(cd("username") + f"\r\nContent-Type: text/plain; charset={charset}", "alice") + PW + END
    with pytest.raises(UnreadableBody):
        login_username(body, MP, FIELD)


@pytest.mark.parametrize(("content_type", "body", "expected"), [o[1:] for o in ORDINARY], ids=[o[0] for o in ORDINARY])
def test_ordinary_logins_are_read(content_type: str | None, body: bytes, expected: str) -> None:
    assert login_username(body, content_type or "", FIELD) == expected
