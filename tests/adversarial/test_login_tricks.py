"""Login POST shapes that try to make the gateway judge one user while the CRM logs in another (issue 5 item 3).

The gateway reads the submitted username to judge the login before it reaches the
CRM (DESIGN.md §3.3, §4). bob is suspended by a user rule, so a login the gateway
judges as bob is answered 403 and never reaches the CRM. A trick wins if the CRM
reads "bob" from a body the gateway read differently: the CRM's login record is
the ground truth. Shapes the gateway cannot read unambiguously (the same field
twice, a username in the query string that back ends merging query and body would
read, a non-string JSON value, a charset other than UTF-8) are refused with 400:
a security gateway must not guess which of two usernames the CRM will use.
"""

from __future__ import annotations

import copy
import gzip
import json
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.forms import UnreadableBody, field_from_body
from tests.adversarial.support import (
    CRM_COOKIE,
    GATEWAY_COOKIE,
    raw_request,
    send_raw,
    set_cookie_names,
    status_of,
)
from tests.e2e.harness import OFFICE, POLICY, free_port, stack

BOUNDARY = "----adversarial"


def suspended_bob() -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["rules"].append({"title": "bob is suspended", "action": "block", "users": ["bob"]})
    return policy


def multipart(*parts: tuple[str, bytes]) -> bytes:
    """Parts given as (headers, content); headers without the trailing CRLF."""
    out = b""
    for headers, content in parts:
        out += f"--{BOUNDARY}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def field(name: str, value: str) -> tuple[str, bytes]:
    return f'Content-Disposition: form-data; name="{name}"', value.encode()


FORM = "application/x-www-form-urlencoded"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def two_documents(crm: str, gateway: str) -> bytes:
    """A body holding two multipart documents: bob's login split at ``crm``, jim's at ``gateway``.

    Parsers that read a different boundary from one Content-Type find a different login in it.
    """
    def document(boundary: str, user: str) -> bytes:
        return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"username\"\r\n\r\n{user}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nS3same\r\n"
                f"--{boundary}--\r\n").encode()
    return document(crm, "bob") + document(gateway, "jim")


@dataclass(frozen=True)
class LoginShape:
    description: str
    target: str
    content_type: str | None
    body: bytes
    status: int  # 403: judged as bob; 400: refused as unreadable or ambiguous


SHAPES = [
    LoginShape("control: a plain form login as bob", "/login", FORM, b"username=bob&password=S3same", 403),
    LoginShape("upper case and spaces", "/login", FORM, b"username=+BOB+&password=S3same", 403),
    LoginShape("percent-encoded field name and value", "/login", FORM, b"user%6Eame=%62ob&password=S3same", 403),
    LoginShape("fullwidth letters (NFKC folds them to bob)", "/login", FORM,
               "username=\uff42\uff4f\uff42&password=S3same".encode(), 403),
    LoginShape("no Content-Type (read as a form by many back ends)", "/login", None,
               b"username=bob&password=S3same", 403),
    LoginShape("username twice in the body, victim first", "/login", FORM,
               b"username=jim&username=bob&password=S3same", 400),
    LoginShape("username twice in the body, victim last", "/login", FORM,
               b"username=bob&username=jim&password=S3same", 400),
    LoginShape("username in the query string only", "/login?username=bob", FORM, b"password=S3same", 400),
    LoginShape("username in the query string and another in the body", "/login?username=bob", FORM,
               b"username=jim&password=S3same", 400),
    LoginShape("username in upper case in the query string (ASP.NET ignores case)", "/login?USERNAME=bob", FORM,
               b"username=jim&password=S3same", 400),
    LoginShape("a second username in upper case in the body", "/login", FORM,
               b"username=jim&USERNAME=bob&password=S3same", 400),
    LoginShape("NUL after the name (C back ends stop there)", "/login", FORM, b"username=bob%00x&password=S3same", 400),
    LoginShape("form body declared UTF-16", "/login", f"{FORM}; charset=utf-16",
               "username=bob&password=S3same".encode("utf-16"), 400),
    LoginShape("JSON", "/login", "application/json", b'{"username": "bob", "password": "S3same"}', 403),
    LoginShape("JSON with a +json media type", "/login", "application/vnd.acme+json",
               b'{"username": "bob", "password": "S3same"}', 403),
    LoginShape("JSON, media type in upper case", "/login", "Application/JSON",
               b'{"username": "bob", "password": "S3same"}', 403),
    LoginShape("JSON with the username twice", "/login", "application/json",
               b'{"username": "jim", "username": "bob", "password": "S3same"}', 400),
    LoginShape("JSON with a list as username", "/login", "application/json",
               b'{"username": ["bob"], "password": "S3same"}', 400),
    LoginShape("JSON with an operator object as username", "/login", "application/json",
               b'{"username": {"$ne": ""}, "password": {"$ne": ""}}', 400),
    LoginShape("JSON with a number as username", "/login", "application/json",
               b'{"username": 7, "password": "S3same"}', 400),
    LoginShape("JSON declared UTF-16", "/login", "application/json; charset=utf-16",
               json.dumps({"username": "bob", "password": "S3same"}).encode("utf-16"), 400),
    LoginShape("multipart", "/login", MULTIPART, multipart(field("username", "bob"), field("password", "S3same")), 403),
    LoginShape("multipart, username part twice", "/login", MULTIPART,
               multipart(field("username", "jim"), field("username", "bob"), field("password", "S3same")), 400),
    LoginShape("multipart, username part declared UTF-16", "/login", MULTIPART,
               multipart(('Content-Disposition: form-data; name="username"\r\n'
                          "Content-Type: text/plain; charset=utf-16", "bob".encode("utf-16")),
                         field("password", "S3same")), 400),
    LoginShape("multipart, an array-style part name (PHP reads username[] as username)", "/login", MULTIPART,
               multipart(field("username[]", "bob"), field("password", "S3same")), 400),
    LoginShape("form, an array-style field name", "/login", FORM, b"username[]=bob&password=S3same", 400),
    LoginShape("multipart, RFC 2231 field name", "/login", MULTIPART,
               multipart(("Content-Disposition: form-data; name*=utf-8''username", b"bob"),
                         field("password", "S3same")), 400),  # aiohttp reads it, PHP and Rack do not
    # aiohttp (the demo CRM) decodes a text part in its own charset: '\\u0062ob' is bob (review 13).
    LoginShape("multipart, the username part in Python's raw_unicode_escape", "/login", MULTIPART,
               multipart(('Content-Disposition: form-data; name="username"\r\n'
                          "Content-Type: text/plain; charset=raw_unicode_escape", b"\\u0062ob"),
                         field("password", "S3same")), 400),
    # aiohttp decodes a base64 part (bob), PHP and Rack read its text (Ym9i): two readings.
    # The demo CRM (aiohttp) names a part by its name*= and read bob; the gateway's MIME parser read jim.
    LoginShape("multipart, name*= beside a plain name (review 11)", "/login", MULTIPART,
               multipart(("Content-Disposition: form-data; name=\"x\"; name*=utf-8''username", b"bob"),
                         field("username", "jim"), field("password", "S3same")), 400),
    LoginShape("multipart, base64 part", "/login", MULTIPART,
               multipart(('Content-Disposition: form-data; name="username"\r\n'
                          "Content-Transfer-Encoding: base64", b"Ym9i"), field("password", "S3same")), 400),
    LoginShape("a username of 60,000 characters (each failure keeps a counter named after it)", "/login", FORM,
               b"password=S3same&username=bob" + b"x" * 60000, 400),
    LoginShape("JSON nested too deeply for the parser", "/login", "application/json",
               b'{"username": "bob", "password": "S3same", "x": ' + b"[" * 30000 + b"]" * 30000 + b"}", 400),
    LoginShape("multipart with more parts than a login form has", "/login", MULTIPART,
               multipart(*(field(f"pad{i}", "x") for i in range(40)), field("username", "bob"),
                         field("password", "S3same")), 400),
    LoginShape("multipart with kilobytes of part headers", "/login", MULTIPART,
               multipart(('Content-Disposition: form-data; name="username"' + "; a=b" * 1000, b"bob"),
                         field("password", "S3same")), 400),
    LoginShape("a media type the gateway cannot read", "/login", "text/plain", b"username=bob&password=S3same", 400),
    # Two boundaries in one Content-Type: the gateway's MIME parser read the RFC 2231 or the later one
    # (jim), aiohttp the plain or the first one (bob): bob was logged in from anywhere jim may be.
    LoginShape("multipart, an RFC 2231 boundary beside a plain one", "/login",
               "multipart/form-data; boundary*=utf-8''GW; boundary=CRM", two_documents("CRM", "GW"), 400),
    LoginShape("multipart, an RFC 2231 continued boundary beside a plain one", "/login",
               "multipart/form-data; boundary*0*=utf-8''GW; boundary=CRM", two_documents("CRM", "GW"), 400),
    LoginShape("multipart, a boundary inside another parameter's quotes", "/login",
               'multipart/form-data; x="a;boundary=CRM"; boundary=GW', two_documents("CRM", "GW"), 400),
    LoginShape("multipart, the boundary twice", "/login",
               "multipart/form-data; boundary=CRM; boundary=GW", two_documents("CRM", "GW"), 400),
    LoginShape("multipart, a boundary with a backslash in quotes", "/login",
               'multipart/form-data; boundary="CR\\M"', two_documents("CRM", "CR\\M"), 400),
    LoginShape("multipart, a boundary of 71 characters", "/login",
               "multipart/form-data; boundary=" + "b" * 71, two_documents("b" * 71, "GW"), 400),
    LoginShape("login path with a trailing slash", "/login/", FORM, b"username=bob&password=S3same", 403),
    LoginShape("login path with ;params", "/login;jsessionid=1", FORM, b"username=bob&password=S3same", 403),
    LoginShape("login path with a double slash and an encoded letter", "//%6Cogin", FORM,
               b"username=bob&password=S3same", 403),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[shape.description for shape in SHAPES])
async def test_login_shapes_cannot_log_in_a_suspended_user(tmp_path: Path, shape: LoginShape) -> None:
    async with stack(tmp_path, policy=suspended_bob()) as s:
        headers = [("Content-Type", shape.content_type)] if shape.content_type else []
        response = await send_raw(s.port, raw_request("POST", shape.target, headers, shape.body))
        assert status_of(response) == shape.status
        assert await s.crm_logins() == [], "the login reached the CRM"
        assert await s.crm_requests() == []
        assert "S3same" not in s.logs.getvalue()  # refused or denied, the password is never logged


@pytest.mark.parametrize(("content_type", "body"), [
    (MULTIPART, multipart(*(field(f"f{i}", "x") for i in range(1300)))),
    (MULTIPART, multipart(('Content-Disposition: form-data; name="username"' + "; a=b" * 10000, b"bob"))),
    ("application/json", b'{"username": ' + b"[" * 30000 + b"]" * 30000 + b"}"),
], ids=["multipart, 1,300 parts", "multipart, 10,000 header parameters", "JSON nested 30,000 deep"])
def test_a_64_kib_login_body_is_read_or_refused_at_once(content_type: str, body: bytes) -> None:
    """A denial-of-service guard, not a speed target: the login body is read on the event loop, and
    the MIME parser took 0.3-0.6 s on such bodies (every other request of the worker waiting)."""
    started = time.process_time()
    with pytest.raises(UnreadableBody):
        field_from_body(body, content_type, "username")
    assert time.process_time() - started < 0.1


async def test_a_login_the_gateway_cannot_attribute_never_reaches_the_crm(tmp_path: Path) -> None:
    """The gateway reads 'user', the CRM 'username': unjudged, the login would pass as anonymous and public."""
    login = {"username_field": "user"}
    async with stack(tmp_path, login=login) as s:
        body = b"username=jim&password=demo"
        response = await send_raw(s.port, raw_request("POST", "/login", [("Content-Type", FORM)], body))
        head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        cookies = [line.split(":", 1)[1] for line in head.split("\r\n") if line.lower().startswith("set-cookie:")]
        assert status_of(response) == 400
        assert await s.crm_logins() == []
        assert CRM_COOKIE not in set_cookie_names(cookies)
        assert "no 'user' field" in s.logs.events("request.bad_login")[-1]["error"]


async def test_an_oversized_login_body_is_refused_before_the_crm(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=suspended_bob()) as s:
        body = b"password=demo&pad=" + b"x" * (70 * 1024) + b"&username=bob"
        response = await send_raw(s.port, raw_request("POST", "/login", [("Content-Type", FORM)], body))
        assert status_of(response) == 400
        assert await s.crm_logins() == []


async def test_control_jim_logs_in_with_every_readable_shape(tmp_path: Path) -> None:
    """The refusals above are about ambiguity, not about the shapes: jim gets in with each readable one."""
    readable = [
        (FORM, b"username=jim&password=demo"),
        ("application/json", b'{"username": "jim", "password": "demo"}'),
        ("application/json; charset=utf-8", b'{"username": "jim", "password": "demo"}'),
        (f"{FORM}; charset=UTF-8", b"username=jim&password=demo"),
        (MULTIPART, multipart(field("username", "jim"), field("password", "demo"))),
        (f'multipart/form-data;boundary="{BOUNDARY}"', multipart(field("username", "jim"), field("password", "demo"))),
        (f"Multipart/Form-Data; Boundary={BOUNDARY}; charset=utf-8",
         multipart(field("username", "jim"), field("password", "demo"))),
    ]
    async with stack(tmp_path, policy=suspended_bob()) as s:
        for content_type, body in readable:
            response = await send_raw(s.port, raw_request("POST", "/login", [("Content-Type", content_type)], body),
                                      source=OFFICE)
            assert status_of(response) in (302, 303), content_type
        assert [(e["username"], e["ok"]) for e in await s.crm_logins()] == [("jim", True)] * len(readable)


async def test_a_login_during_a_session_store_outage_is_not_forwarded_unjudged(tmp_path: Path) -> None:
    """Public pages stay up without the store, but a login cannot be watched: 503, the CRM never sees it.

    The browser still holds an (old) gateway cookie, so loading the session needs the store.
    """
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    async with stack(tmp_path, policy=suspended_bob(), session={"store": "redis", "redis_url": dead_redis}) as s:
        old_cookie = ("Cookie", f"{GATEWAY_COOKIE}=0123456789abcdef")
        for user in ("bob", "jim"):
            response = await send_raw(s.port, raw_request("POST", "/login", [("Content-Type", FORM), old_cookie],
                                                          f"username={user}&password=demo".encode()))
            assert status_of(response) == 503, user
            assert CRM_COOKIE.encode() not in response
        response = await send_raw(s.port, raw_request("GET", "/login", [old_cookie]))
        assert status_of(response) == 200  # the login page itself still loads
        assert await s.crm_logins() == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP", "identity, gzip"])
async def test_a_compressed_login_body_is_refused(tmp_path: Path, encoding: str) -> None:
    """The gateway would judge the decompressed body and forward it under the client's compressed length."""
    body = b"username=jim&password=demo"
    packed = gzip.compress(body) if "gzip" in encoding.lower() else zlib.compress(body)
    async with stack(tmp_path, policy=suspended_bob()) as s:
        headers = [("Content-Type", FORM), ("Content-Encoding", encoding)]
        response = await send_raw(s.port, raw_request("POST", "/login", headers, packed))
        assert status_of(response) == 400
        assert await s.crm_requests() == []


async def test_refusal_logs_do_not_echo_long_client_text(tmp_path: Path) -> None:
    async with stack(tmp_path, policy=suspended_bob()) as s:
        long_type = "application/x-" + "a" * 8000
        long_name = "username" + "[" * 5000 + "]"
        for headers, body in (([("Content-Type", long_type)], b"username=bob"),
                              ([("Content-Type", FORM)], f"{long_name}=bob&username=bob".encode())):
            response = await send_raw(s.port, raw_request("POST", "/login", headers, body))
            assert status_of(response) == 400
        for event in s.logs.events("request.bad_login"):
            assert len(event["error"]) < 200
        assert len(s.logs.events("request.bad_login")) == 2

