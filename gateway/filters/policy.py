"""Judge the request against the compiled policy (DESIGN.md §3.3-3.5) and answer denials (§5, §6)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from gateway.exchange import Exchange
from gateway.forms import FORM, UnreadableBody, field_values, override_methods_of, read_small_body
from gateway.headers import METHOD_OVERRIDE_FIELD, METHOD_OVERRIDE_HEADERS, METHOD_OVERRIDE_PARAM, canonical_name
from gateway.logs import get_logger
from gateway.metrics import DECISION_TIME
from gateway.policy import Decision, Policy, RequestFacts
from gateway.sessions import SessionStore, save_session_later

log = get_logger("policy")


_OVERRIDES = frozenset(canonical_name(name) for name in METHOD_OVERRIDE_HEADERS)
# The largest POST body read for a _method override (only where one could be judged more strictly):
# a form with a file in it; a larger one there is refused rather than forwarded unjudged.
MAX_OVERRIDE_BODY = 1024 * 1024


def facts_of(ex: Exchange, *, user: str | None, method: str | None = None) -> RequestFacts:
    assert ex.path is not None
    return RequestFacts(
        client_ip=ex.client_ip,
        method=method or ex.request.method,
        path=ex.path.match,
        user_agent=ex.request.headers.get("User-Agent", ""),
        user=user,
        at=datetime.now(UTC),
    )


def override_methods(ex: Exchange) -> list[str]:
    """Methods other than the request line's that the request asks the CRM to run instead.

    A GET with ``X-HTTP-Method-Override: POST`` (or ``?_method=POST``) is a POST to a
    CRM that honours overrides: judged only as a GET it would slip past a function
    bound to POST, such as clock-in. Raises :class:`UnreadableBody` for an override the
    gateway cannot read one way (see :func:`gateway.forms.field_values`).
    """
    # Every override header's name holds "method" in some case; most requests have none.
    values = [value for name, value in ex.request.headers.items()
              if "ethod" in name.lower() and canonical_name(name) in _OVERRIDES]
    query = ex.query
    if query and ("%" in query or "\\" in query or "ethod" in query.lower()):  # '%5Fm%65thod' is '_method' too
        # Read as a form body is (Symfony and Laravel fall back to the query, Express reads it with qs):
        # PHP's '.method' and NUL, Rack's and qs's brackets, ASP.NET's names in any case.
        values += field_values(query.encode("utf-8", "surrogateescape"), FORM, METHOD_OVERRIDE_PARAM,
                               METHOD_OVERRIDE_FIELD)
    if not values:
        return []
    methods = override_methods_of(part for value in values for part in value.split(","))
    return sorted(methods - {ex.request.method})


def _rank(decision: Decision) -> int:
    """0 for an enforced deny, 1 for a report-only one, 2 for an allow: lower is stricter."""
    return 0 if not decision.allowed else 1 if decision.action == "deny" else 2


def _strictest(decisions: list[Decision]) -> Decision:
    """An enforced deny beats a report-only one, which beats an allow; the first of equals wins."""
    return min(decisions, key=_rank)


def log_decision(ex: Exchange, decision: Decision, event: str) -> None:
    """One structured event per denial, with the fields DESIGN.md §6 lists."""
    assert ex.path is not None
    ex.denial_logged = ex.denial_logged or event == "access.denied"
    log.warning(event, **ex.access_fields(), channel=decision.channel, functions=list(decision.functions),
                rule_id=decision.rule_id, rule_title=decision.rule_title, reason=decision.reason)


class PolicyFilter:
    name = "policy"

    def __init__(self, policy: Policy, sessions: SessionStore | None = None, *, log_allowed: bool = False) -> None:
        self.policy = policy
        self.sessions = sessions
        self.log_allowed = log_allowed

    def _body_may_override(self, ex: Exchange, decision: Decision) -> bool:
        """Whether a ``_method`` in this POST's body could make it stricter: then the body is read.

        Rails and Spring read the override from a form body only, Laravel and Symfony from
        the body first, Laravel from a JSON body too, ASP.NET MVC a form's
        ``X-HTTP-Method-Override`` field. Only a POST is overridden, and only
        into a method some function of its path is bound to whose decision is stricter. The
        body is read whatever its Content-Type says (see :func:`gateway.forms.field_values`).
        """
        assert ex.path is not None
        if ex.request.method != "POST" or not (bound := self.policy.bound_methods(ex.path.match) - {"POST"}):
            return False
        if ex.body is None and not ex.request.body_exists:
            return False
        rank = _rank(decision)
        return any(_rank(self.policy.decide(facts_of(ex, user=ex.user, method=m))) < rank for m in bound)

    def _strictest_of(self, ex: Exchange, decision: Decision, methods: list[str]) -> Decision:
        """``decision``, or a stricter one the request gets as one of the ``methods`` it may run as."""
        if not methods:
            return decision
        return _strictest([decision, *(self.policy.decide(facts_of(ex, user=ex.user, method=m)) for m in methods)])

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None:
        started = time.perf_counter()
        decision = self.policy.decide(facts_of(ex, user=ex.user))
        try:
            if _rank(decision):
                decision = self._strictest_of(ex, decision, override_methods(ex))
            DECISION_TIME.observe(time.perf_counter() - started)
            if _rank(decision) and self._body_may_override(ex, decision):
                if ex.body is None:  # (a login's body was read already)
                    ex.body = await read_small_body(ex.request, "POST", MAX_OVERRIDE_BODY)
                content_type = ex.request.headers.get("Content-Type", "")
                values = field_values(ex.body, content_type, METHOD_OVERRIDE_PARAM, METHOD_OVERRIDE_FIELD)
                decision = self._strictest_of(ex, decision, sorted(override_methods_of(values) - {"POST"}))
        except UnreadableBody as exc:
            log.warning("request.bad_override", request_id=ex.request_id, client_ip=str(ex.client_ip), error=str(exc))
            return ex.deny(400, "bad_request")
        ex.decision = decision
        ex.channel = decision.channel
        if decision.action == "allow":
            if self.log_allowed:
                log.info(
                    "access.allowed",
                    request_id=ex.request_id,
                    client_ip=str(ex.client_ip),
                    user=ex.user,
                    channel=decision.channel,
                    method=ex.request.method,
                    path=ex.path.forward if ex.path else None,
                    rule_id=decision.rule_id,
                )
            return None
        if not decision.enforced:
            log_decision(ex, decision, "access.would_deny")
            return None
        log_decision(ex, decision, "access.denied")
        if decision.reason == "outside_login_hours" and ex.session is not None and self.sessions is not None:
            # Login hours ending ends a live session (DESIGN.md §3.4).
            await self.sessions.end(ex.session)
            save_session_later(ex, self.sessions)
        return ex.deny(403, decision.reason or "ip_not_allowed")
