"""The TOTP step-up at ``/_gateway/2fa`` and the gate that sends pending sessions there (DESIGN.md §4).

After the CRM accepted the password, the session holds the CRM's login
response. A valid code (RFC 6238, once per user, CSRF-checked for the form)
releases it: its Set-Cookie headers and its redirect, same-origin only.
"""

from __future__ import annotations

import hmac
import html
import json
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from aiohttp import web

from gateway.exchange import Exchange
from gateway.filters.login import TWO_FACTOR_PATH, challenge, same_origin_path
from gateway.filters.policy import facts_of, log_decision
from gateway.logs import get_logger
from gateway.policy import Policy
from gateway.sessions import SessionStore, save_session_later
from gateway.state import StateUnavailable
from gateway.totp import TotpVerifier, VerifyResult

log = get_logger("two_factor")

_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Second factor</title>
<style>body{{font-family:system-ui,sans-serif;max-width:24rem;margin:4rem auto;padding:0 1rem;color:#222}}
input,button{{font-size:1.25rem;padding:.4rem}} .error{{color:#a00}}</style></head>
<body><main>
<h1>Enter your code</h1>
<p>Signed in as <strong>{user}</strong>. Enter the 6-digit code from your authenticator app.</p>
{error}
<form method="post" action="{action}">
<label for="code">Code</label>
<input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]*"
 maxlength="8" required autofocus>
<input type="hidden" name="csrf_token" value="{csrf}">
<button type="submit">Continue</button>
</form>
</main></body></html>
"""

MAX_FORM = 4096


class TwoFactorEndpoint:
    name = "two_factor"

    def __init__(self, verifier: TotpVerifier | None, store: SessionStore, login_path: str, *,
                 policy: Policy, login_method: str = "POST", case_insensitive: bool = False) -> None:
        self.verifier = verifier
        self.store = store
        self.login_path = login_path
        self.policy = policy
        self.login_method = login_method
        self.login_match = login_path.lower() if case_insensitive else login_path  # as rules see it

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        assert ex.path is not None
        if ex.path.match != TWO_FACTOR_PATH:
            return None
        session = ex.session
        if session is None or "pending" not in session or self.verifier is None:
            # Nothing is waiting for a code: go (back) to the CRM's login.
            if ex.wants_json:
                return _json(409, {"error": "no_pending_login"})
            return web.Response(status=303, headers={"Location": self.login_path, "Cache-Control": "no-store"})
        target = same_origin_path(ex.request.query.get("next") or session["pending"].get("location"),
                                  ex.request.headers.get("Host"))
        if ex.request.method == "GET":
            return self._form(ex, target, error=None)
        if ex.request.method != "POST":
            raise web.HTTPMethodNotAllowed(ex.request.method, ["GET", "POST"])
        as_json = ex.request.content_type == "application/json"
        fields = await self._read(ex, as_json)
        if fields is None:
            return ex.deny(400, "bad_request", as_json=as_json or ex.wants_json)
        if not as_json and not hmac.compare_digest(str(fields.get("csrf_token", "")), str(session.get("csrf", "-"))):
            log.warning("mfa.csrf_rejected", request_id=ex.request_id, user=session["user"],
                        client_ip=str(ex.client_ip))
            return ex.deny(403, "bad_request", as_json=False)
        user = str(session["user"])
        # The code completes a login: judged as the login would be now, from this address (a
        # pending cookie carried elsewhere must not have the CRM's session released there).
        decision = self.policy.decide(replace(facts_of(ex, user=user, method=self.login_method), path=self.login_match))
        if not decision.allowed:
            log_decision(ex, decision, "access.denied")
            return ex.deny(403, decision.reason or "ip_not_allowed", as_json=as_json or ex.wants_json)
        try:
            result = await self.verifier.verify(user, str(fields.get("code", "")))
        except StateUnavailable:
            return ex.deny(503, "session_store_unavailable", as_json=as_json or ex.wants_json, retry_after=5)
        if result is VerifyResult.OK:
            return self._release(ex, target, as_json)
        log.warning("mfa.failed", request_id=ex.request_id, user=user, client_ip=str(ex.client_ip),
                    result=result.name.lower())
        if result is VerifyResult.LOCKED:
            left = await self.verifier.locked_for(user)
            return ex.deny(429, "mfa_locked", as_json=as_json or ex.wants_json, retry_after=int(left or 0) + 1)
        if as_json:
            return _json(401, {"mfa_required": True, "error": "invalid_code", "mfa_url": TWO_FACTOR_PATH})
        return self._form(ex, target, error="That code was not accepted. Try the next one.", status=401)

    async def _read(self, ex: Exchange, as_json: bool) -> dict[str, Any] | None:
        body = await ex.request.content.read(MAX_FORM + 1)
        if len(body) > MAX_FORM:
            return None
        if as_json:
            try:
                data = json.loads(body)
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
        from urllib.parse import parse_qs

        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

    def _form(self, ex: Exchange, target: str, *, error: str | None, status: int = 200) -> web.Response:
        assert ex.session is not None
        if ex.wants_json:
            return _json(401 if error else 200, {"mfa_required": True, "mfa_url": TWO_FACTOR_PATH})
        page = _FORM.format(
            user=html.escape(str(ex.session["user"])),
            error=f'<p class="error" role="alert">{html.escape(error)}</p>' if error else "",
            action=html.escape(f"{TWO_FACTOR_PATH}?next={quote(target, safe='')}"),
            csrf=html.escape(str(ex.session.get("csrf", ""))),
        )
        return web.Response(status=status, text=page, content_type="text/html", headers={
            "Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
        })

    def _release(self, ex: Exchange, target: str, as_json: bool) -> web.Response:
        """The code was good: hand over the CRM's held cookies and send the user on."""
        session = ex.session
        assert session is not None
        pending = session.pop("pending")
        session.pop("csrf", None)
        session["mfa"] = True
        save_session_later(ex, self.store)
        log.info("mfa.passed", request_id=ex.request_id, user=session["user"], client_ip=str(ex.client_ip))
        if as_json:
            response = _json(200, {"ok": True, "location": target})
        else:
            response = web.Response(status=303, headers={"Location": target, "Cache-Control": "no-store"})
        for cookie in pending.get("cookies", ()):
            response.headers.add("Set-Cookie", cookie)
        return response


class MFAGate:
    """A session whose user needs 2FA and has not given it reaches nothing but public pages."""

    name = "mfa_gate"

    def __init__(self, store: SessionStore, login_path: str) -> None:
        self.store = store
        self.login_path = login_path

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        session, decision = ex.session, ex.decision
        if session is None or decision is None or "user" not in session or session.get("mfa"):
            return None
        if not decision.settings.require_2fa or decision.public:
            return None
        if "pending" in session:
            return challenge(ex, session["pending"].get("location", "/"))
        # Logged in before 2FA became required: log in again, through the step-up.
        await self.store.end(session)
        save_session_later(ex, self.store)
        if ex.wants_json:
            return _json(401, {"mfa_required": True, "mfa_url": TWO_FACTOR_PATH})
        return web.Response(status=303, headers={"Location": self.login_path, "Cache-Control": "no-store"})


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})
