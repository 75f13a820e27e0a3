"""What reached the demo CRM: the ground truth every end-to-end test asks for.

The gateway's own logs say what it *meant* to do; this record says what the CRM
actually received (which requests, with which forwarding headers and cookies,
which logins, who clocked in). It holds no secrets: cookie *names* only, never
cookie values or passwords. Every list is bounded, so a long benchmark cannot
grow the demo CRM's memory without limit.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.headers import FORWARDING_HEADERS, GATEWAY_WORKER, IDENTITY_HEADERS, OVERRIDE_HEADERS

DEFAULT_LIMIT = 10_000

# Request headers worth recording: what the gateway adds, rewrites or must strip
# (DESIGN.md §3.1), plus Host and User-Agent (the channel). The names are the
# gateway's own constants: the CRM does not act on them, it only reports them.
# Compared after lower-casing and mapping "_" to "-", so X_Forwarded_For is caught too.
HEADERS_OF_INTEREST = frozenset(
    name.lower()
    for name in (*FORWARDING_HEADERS, *IDENTITY_HEADERS, GATEWAY_WORKER, *OVERRIDE_HEADERS, "Host", "User-Agent")
)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class RequestSeen:
    """One request as the CRM received it.

    ``status`` is None while the request is still being handled (a slow request or
    an open WebSocket is visible as soon as it arrives, which drain tests wait for);
    ``body_length`` is then the bytes received so far.
    """

    seq: int
    at: datetime
    method: str
    path: str  # the request target exactly as received (aiohttp's raw_path: includes ?query)
    query: str  # the raw query string, without "?"
    headers: tuple[tuple[str, str], ...]  # headers of interest, in order, duplicates kept
    cookies: tuple[str, ...]  # cookie names only
    user: str | None  # the CRM user whose crm_session cookie came with it, if valid
    body_length: int = 0
    status: int | None = None

    def header(self, name: str) -> list[str]:
        """Every value of a header of interest (several lines stay several values)."""
        wanted = name.lower().replace("_", "-")
        return [v for n, v in self.headers if n.lower().replace("_", "-") == wanted]

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at.isoformat(),
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [[n, v] for n, v in self.headers],
            "cookies": list(self.cookies),
            "user": self.user,
            "body_length": self.body_length,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """A POST /login as the CRM judged it; the password is never kept."""

    username: str
    ok: bool
    at: datetime
    via: str  # "form", "multipart" or "json"

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "ok": self.ok, "at": self.at.isoformat(), "via": self.via}


@dataclass(frozen=True, slots=True)
class Action:
    """Something a user did that a test wants to see happen (or not): clock-in, timesheet, bulk-delete."""

    kind: str
    user: str
    at: datetime
    via: str  # "web" or "mobile": which part of the CRM received it
    detail: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user": self.user,
            "at": self.at.isoformat(),
            "via": self.via,
            "detail": dict(self.detail),
        }


class CRMRecord:
    """Bounded, in-memory record of requests, login attempts and actions."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("the record limit must be at least 1")
        self.limit = limit
        self._requests: deque[RequestSeen] = deque(maxlen=limit)
        self._logins: deque[LoginAttempt] = deque(maxlen=limit)
        self._actions: deque[Action] = deque(maxlen=limit)
        self._seq = itertools.count(1)

    # -- requests -------------------------------------------------------------
    def request_started(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        cookies: Iterable[str],
        user: str | None,
    ) -> int:
        """Record an arriving request; returns its sequence number for :meth:`request_finished`."""
        seq = next(self._seq)
        self._requests.append(
            RequestSeen(
                seq=seq,
                at=_now(),
                method=method,
                path=path,
                query=query,
                headers=tuple(headers),
                cookies=tuple(cookies),
                user=user,
            )
        )
        return seq

    def request_finished(self, seq: int, *, status: int, body_length: int) -> None:
        """Complete an entry; a no-op if it was reset or pushed out meanwhile."""
        # In-flight requests are the newest, so search from the right.
        for index in range(len(self._requests) - 1, -1, -1):
            entry = self._requests[index]
            if entry.seq == seq:
                self._requests[index] = replace(entry, status=status, body_length=body_length)
                return
            if entry.seq < seq:
                return

    @property
    def requests(self) -> tuple[RequestSeen, ...]:
        return tuple(self._requests)

    def requests_to(self, path: str) -> list[RequestSeen]:
        """Requests whose path (without the query) is exactly ``path``."""
        return [r for r in self._requests if r.path.partition("?")[0] == path]

    # -- logins and actions ---------------------------------------------------
    def login(self, username: str, *, ok: bool, via: str) -> LoginAttempt:
        # A username is what a client typed: keep the record bounded in size too.
        attempt = LoginAttempt(username=username[:200], ok=ok, at=_now(), via=via)
        self._logins.append(attempt)
        return attempt

    @property
    def logins(self) -> tuple[LoginAttempt, ...]:
        return tuple(self._logins)

    def action(self, kind: str, user: str, *, via: str, **detail: str) -> Action:
        entry = Action(kind=kind, user=user, at=_now(), via=via, detail=tuple(detail.items()))
        self._actions.append(entry)
        return entry

    @property
    def actions(self) -> tuple[Action, ...]:
        return tuple(self._actions)

    def reset(self) -> None:
        """Forget everything recorded (sessions are not part of the record and stay)."""
        self._requests.clear()
        self._logins.clear()
        self._actions.clear()


CRMLog = web.AppKey("crm_log", CRMRecord)
"""The app key under which a demo CRM app keeps its :class:`CRMRecord`."""
