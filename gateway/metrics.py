"""Prometheus metrics, prefixed ``crmgw_`` (DESIGN.md §5), safe with several worker processes.

With ``--workers N`` the parent sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start, so every worker writes its samples there and any worker can
answer a scrape with the sum of all of them.
"""

from __future__ import annotations

import os

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _multiprocess

from gateway.exchange import Exchange
from gateway.schema import IPNetwork

REQUESTS = Counter(
    "crmgw_requests_total",
    "Requests by outcome: allow, deny, would_deny (report-only) or answered (by the gateway itself)",
    ["decision", "reason"],
)
_ALLOWED = REQUESTS.labels("allow", "")  # the common case, without a labels() lookup per request
UPSTREAM_LATENCY = Histogram(
    "crmgw_upstream_response_seconds",
    "Time from sending a request upstream to receiving the CRM's response head",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DECISION_TIME = Histogram(
    "crmgw_decision_seconds",
    "Time spent in the policy decision",
    buckets=(0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.005),
)
RELOADS = Counter("crmgw_config_reloads_total", "Config reloads by result", ["result"])
UPSTREAM_ERRORS = Counter("crmgw_upstream_errors_total", "Upstream failures answered 502/504", ["status"])


def record_request(ex: Exchange, status: int) -> None:
    decision = ex.decision
    if ex.denied is not None:
        REQUESTS.labels("deny", ex.denied).inc()  # a rule's, or a ban, a lock-out, a malformed request
    elif decision is None:
        REQUESTS.labels("answered", str(status)).inc()
    elif decision.action == "allow":
        _ALLOWED.inc()
    else:
        REQUESTS.labels("deny" if decision.enforced else "would_deny", decision.reason or "").inc()


def _registry() -> CollectorRegistry | None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return None


class MetricsEndpoint:
    """Answers the scrape only to the configured addresses; everyone else gets a plain 404."""

    def __init__(self, allow: tuple[IPNetwork, ...]) -> None:
        self.allow = allow

    def __call__(self, ex: Exchange) -> web.Response:
        if not any(ex.client_ip in network for network in self.allow):
            return ex.deny(404, "not_found")
        registry = _registry()
        body = generate_latest(registry) if registry is not None else generate_latest()
        response = web.Response(body=body, headers={"Cache-Control": "no-store"})
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response
