"""The gateway's own answers: every denial DESIGN.md §5 lists is "access_denied" in JSON, its reason telling which."""

from __future__ import annotations

import json

import pytest

from gateway.pages import denial


@pytest.mark.parametrize(("status", "reason"), [
    (403, "function_blocked"), (400, "bad_request"), (429, "login_banned"), (429, "mfa_locked"),
    (503, "session_store_unavailable"),
])
def test_a_denial_in_json_is_access_denied_with_its_reason(status: int, reason: str) -> None:
    answer = denial(status=status, reason=reason, client_ip="203.0.113.9", request_id="r1", as_json=True)
    body = json.loads(answer.text or "")
    assert (answer.status, body["error"], body["reason"]) == (status, "access_denied", reason)
    assert (body["client_ip"], body["request_id"]) == ("203.0.113.9", "r1")


@pytest.mark.parametrize(("status", "reason"), [(502, "upstream_unavailable"), (504, "upstream_timeout"),
                                                 (405, "bad_request"), (500, "internal_error")])
def test_what_is_no_denial_is_a_gateway_error(status: int, reason: str) -> None:
    answer = denial(status=status, reason=reason, client_ip="203.0.113.9", request_id="r1", as_json=True)
    assert json.loads(answer.text or "")["error"] == "gateway_error"
