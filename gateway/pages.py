"""What a denied employee sees: a short page (or JSON for the app) to send the admin.

The page says what happened in plain words, with the client IP as the gateway
saw it, the time and a request id. Rule titles are never shown: they may tell
an outsider how the policy is built.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime

from aiohttp import web

from gateway.headers import REQUEST_ID

REASONS: dict[str, str] = {
    "ip_not_allowed": "The CRM cannot be used from the network you are connected to.",
    "country_not_allowed": "The CRM cannot be used from the country you are connecting from.",
    "function_blocked": "This part of the CRM is not available to you from here.",
    "user_blocked": "Your account may not use the CRM from here.",
    "outside_login_hours": "It is outside your login hours.",
    "mfa_required": "A second factor is required for your account, but none is set up yet. "
    "Ask your administrator to enroll you.",
    "mfa_locked": "Too many wrong codes. Wait 15 minutes, then try again.",
    "login_banned": "Too many failed logins. Wait a while, then try again.",
    "session_store_unavailable": "The gateway cannot reach its session store right now. Try again shortly.",
    "bad_request": "The request was malformed and was not passed on.",
    "request_timeout": "Your request's body stopped arriving, so it was not passed on. Try again.",
    "not_found": "There is nothing here.",
    "upstream_unavailable": "The CRM is not answering right now. Try again shortly.",
    "upstream_timeout": "The CRM took too long to answer. Try again shortly.",
    "internal_error": "The gateway could not decide on this request, so it was not passed on.",
}

_TITLES = {
    400: "Bad request",
    403: "Access denied",
    404: "Not found",
    408: "Request timed out",
    429: "Too many attempts",
    500: "Gateway error",
    502: "CRM unavailable",
    503: "Service unavailable",
    504: "CRM timed out",
}

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem;color:#222}}
h1{{font-size:1.5rem}} dl{{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem}}
dt{{font-weight:600}} code{{font-size:1rem}}</style></head>
<body><main>
<h1>{title}</h1>
<p role="alert">{message}</p>
<p>If you think this is wrong, send these details to your administrator:</p>
<dl>
<dt>Your IP address</dt><dd><code id="client-ip">{client_ip}</code></dd>
<dt>Time</dt><dd><code>{time}</code></dd>
<dt>Reason</dt><dd><code id="reason">{reason}</code></dd>
<dt>Request id</dt><dd><code id="request-id">{request_id}</code></dd>
</dl>
</main></body></html>
"""

# DESIGN.md §5: a denial (403, 400 for a malformed request, 429 for a lock-out or ban, 503 without the
# session store) is "access_denied" in JSON, its reason saying which; anything else the gateway answers
# itself (a 502 or 504 from the CRM, a 405, a 404 on its own paths) is "gateway_error".
DENIALS = frozenset({400, 403, 429, 503})


def denial(
    *,
    status: int,
    reason: str,
    client_ip: str,
    request_id: str,
    as_json: bool,
    retry_after: int | None = None,
) -> web.Response:
    """The response for a request the gateway answers itself instead of the CRM."""
    headers = {REQUEST_ID: request_id, "Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    if as_json:
        body = {
            "error": "access_denied" if status in DENIALS else "gateway_error",
            "reason": reason,
            "message": REASONS.get(reason, ""),
            "client_ip": client_ip,
            "request_id": request_id,
        }
        return web.Response(
            status=status, text=json.dumps(body), content_type="application/json", headers=headers
        )
    title = _TITLES.get(status, "Error")
    page = _PAGE.format(
        title=title,
        message=html.escape(REASONS.get(reason, "The request was not passed on.")),
        client_ip=html.escape(client_ip),
        time=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        reason=html.escape(reason),
        request_id=html.escape(request_id),
    )
    headers["X-Frame-Options"] = "DENY"
    headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'"
    return web.Response(status=status, text=page, content_type="text/html", headers=headers)
