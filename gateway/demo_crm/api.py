"""The mobile app's JSON API under /api/mobile/.

The app logs in through the same ``POST /login`` as the browser (JSON body), so the
gateway sees every login; afterwards it sends the ``crm_session`` cookie here. It
deliberately offers an export too: the gateway, not the CRM, must keep the mobile
channel from becoming a way to export contacts (DESIGN.md §0).
"""

from __future__ import annotations

import math

from aiohttp import web

from gateway.demo_crm.data import CONTACTS, contacts_csv
from gateway.demo_crm.pages import csv_response
from gateway.demo_crm.record import CRMLog
from gateway.demo_crm.sessions import require_user

MAX_HOURS = 24.0


async def me(request: web.Request) -> web.Response:
    return web.json_response({"user": require_user(request)})


async def contacts(request: web.Request) -> web.Response:
    require_user(request)
    return web.json_response(
        [
            {"id": c.id, "name": c.name, "company": c.company, "email": c.email, "phone": c.phone}
            for c in CONTACTS
        ]
    )


async def contacts_export(request: web.Request) -> web.Response:
    require_user(request)
    return csv_response(contacts_csv(), "contacts.csv")


async def clock_in(request: web.Request) -> web.Response:
    user = require_user(request)
    action = request.app[CRMLog].action("clock-in", user, via="mobile")
    return web.json_response({"ok": True, "user": user, "at": action.at.isoformat()})


def _bad(message: str) -> web.Response:
    return web.json_response({"error": "bad_request", "detail": message}, status=400)


async def timesheets(request: web.Request) -> web.Response:
    """A field technician logs time: ``{"hours": 7.5, "project": "101", "note": "..."}``."""
    user = require_user(request)
    try:
        body = await request.json()
    except ValueError:
        return _bad("expected a JSON body")
    if not isinstance(body, dict):
        return _bad("expected a JSON object")
    hours = body.get("hours")
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not math.isfinite(hours):
        return _bad("hours: expected a number")
    if not 0 < hours <= MAX_HOURS:
        return _bad(f"hours: expected more than 0 and at most {MAX_HOURS:g}")
    project = str(body.get("project", ""))[:100]
    entry = request.app[CRMLog].action("timesheet", user, via="mobile", hours=f"{hours:g}", project=project)
    return web.json_response(
        {"ok": True, "user": user, "hours": hours, "project": project, "at": entry.at.isoformat()},
        status=201,
    )


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/api/mobile/me", me)
    router.add_get("/api/mobile/contacts", contacts)
    router.add_get("/api/mobile/contacts/export", contacts_export)
    router.add_post("/api/mobile/timeclock/clock-in", clock_in)
    router.add_post("/api/mobile/timesheets", timesheets)
