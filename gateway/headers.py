"""Header names the gateway reads, writes or strips: the one place they are spelled."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy, istr

REQUEST_ID = istr("X-Request-ID")
X_FORWARDED_FOR = istr("X-Forwarded-For")
X_REAL_IP = istr("X-Real-IP")
X_FORWARDED_PROTO = istr("X-Forwarded-Proto")
X_FORWARDED_HOST = istr("X-Forwarded-Host")
FORWARDED = istr("Forwarded")

# What the gateway tells the CRM about the request; a client's copies never pass.
GATEWAY_USER = istr("X-Gateway-User")
GATEWAY_CHANNEL = istr("X-Gateway-Channel")
GATEWAY_WORKER = istr("X-Gateway-Worker")

# Ask the back end to run another method than the request line's (Rails, Laravel, Symfony,
# Express method-override); so does a ``_method`` query parameter. The gateway judges the
# request under each method it may run.
METHOD_OVERRIDE_HEADERS = (istr("X-HTTP-Method-Override"), istr("X-HTTP-Method"), istr("X-Method-Override"))
METHOD_OVERRIDE_PARAM = "_method"
# ASP.NET MVC reads X-HTTP-Method-Override from the header, then from the form and the query
# string, as a field name in any case.
METHOD_OVERRIDE_FIELD = "X-HTTP-Method-Override"

FORWARDING_HEADERS = (X_FORWARDED_FOR, X_REAL_IP, X_FORWARDED_PROTO, X_FORWARDED_HOST, FORWARDED)
IDENTITY_HEADERS = (GATEWAY_USER, GATEWAY_CHANNEL, REQUEST_ID)

# Other headers back ends take the client's address, the scheme, the host or the path from.
# The gateway's forwarding headers are the CRM's only word on the first three (PHP CRMs read
# Client-IP before X-Forwarded-For, Rack X-Forwarded-Ssl before X-Forwarded-Proto), and the
# request line, as judged, on the path: IIS URL Rewrite, Zend, and Symfony before
# CVE-2018-14773 route by X-Original-URL and X-Rewrite-URL, so `GET /echo` with
# `X-Original-URL: /billing` would be billing to them, judged as /echo.
OVERRIDE_HEADERS = tuple(istr(name) for name in (
    "Client-IP", "X-Client-IP", "True-Client-IP", "X-Cluster-Client-IP", "Forwarded-For", "X-Forwarded",
    "X-Originating-IP", "X-Remote-IP", "X-Remote-Addr", "CF-Connecting-IP", "Fastly-Client-IP",
    "X-Forwarded-Ssl", "X-Forwarded-Scheme", "X-Forwarded-Port", "X-Forwarded-Prefix", "Front-End-Https",
    "X-Url-Scheme", "X-Forwarded-Server", "X-Host", "X-HTTP-Host-Override",
    "X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-URI", "X-Forwarded-Path",
))


def canonical_name(name: str) -> str:
    """A header name as CGI, WSGI and PHP back ends read it: case and '-'/'_' folded."""
    return name.lower().replace("_", "-")


def _spellings(name: str) -> frozenset[str]:
    """Every lower-case spelling of ``name`` with each '-' written as '-' or '_'.

    CGI, WSGI and PHP back ends map both characters to '_', so X_Forwarded_For and
    the mixed X-Forwarded_For reach them as X-Forwarded-For does: all must go.
    """
    spellings = [""]
    for index, part in enumerate(name.lower().split("-")):
        spellings = [s + sep + part for s in spellings for sep in (("-", "_") if index else ("",))]
    return frozenset(spellings)


# Headers the gateway owns: removed from every client request, in every spelling.
OWNED_HEADERS: frozenset[str] = frozenset(
    spelling
    for name in (*FORWARDING_HEADERS, *IDENTITY_HEADERS, GATEWAY_WORKER, *OVERRIDE_HEADERS)
    for spelling in _spellings(name)
)

# RFC 9110 §7.6.1: connection-specific headers, never forwarded in either direction
# (plus the ones named in the Connection header itself).
HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# Never written to a log, whatever the event.
SECRET_HEADERS: frozenset[str] = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """The lower-case names the Connection header lists (hop-by-hop for this connection)."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(token.strip().lower() for token in value.split(",") if token.strip())
    return tokens


def asks_for_websocket(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> bool:
    """Whether a request asks to be upgraded to a WebSocket (RFC 6455 §4.1)."""
    return headers.get("Upgrade", "").lower() == "websocket" and "upgrade" in connection_tokens(headers)
