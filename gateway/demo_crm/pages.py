"""The CRM's browser pages: what employees use and what the gateway's rules talk about.

Routes line up with the example rules in config/: ``/timeclock/clock-in`` is the
clock-in function, ``/contacts/export`` and ``/reports/*/csv`` are exports,
``/billing/**`` and ``/invoices/**`` are billing, ``/contacts/bulk-delete`` is
bulk-delete. None of these handlers knows a gateway exists.
"""

from __future__ import annotations

from aiohttp import hdrs, web

from gateway.demo_crm.data import CONTACTS, INVOICES, PROJECTS, contacts_csv, to_csv
from gateway.demo_crm.html import esc, page, table
from gateway.demo_crm.record import CRMLog
from gateway.demo_crm.sessions import require_user


def wants_json(request: web.Request) -> bool:
    return "application/json" in request.headers.get(hdrs.ACCEPT, "") or request.content_type.endswith(
        "json"
    )


def csv_response(text: str, filename: str) -> web.Response:
    response = web.Response(text=text, content_type="text/csv", charset="utf-8")
    response.headers[hdrs.CONTENT_DISPOSITION] = f'attachment; filename="{filename}"'
    return response


async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound(location="/dashboard")


async def dashboard(request: web.Request) -> web.Response:
    user = require_user(request)
    body = f"""<p>Welcome, {esc(user)}</p>
<ul>
  <li><a href="/projects">Projects</a></li>
  <li><a href="/contacts">Contacts</a> (<a href="/contacts/export">export as CSV</a>)</li>
  <li><a href="/reports/sales/csv">Sales report (CSV)</a></li>
  <li><a href="/billing">Billing and invoices</a></li>
  <li><a href="/timeclock">Time clock</a></li>
</ul>"""
    return page("Dashboard", body, user=user)


async def projects(request: web.Request) -> web.Response:
    user = require_user(request)
    rows: list[tuple[object, ...]] = [(p.id, p.name, p.customer, p.status) for p in PROJECTS]
    return page("Projects", table(("#", "Project", "Customer", "Status"), rows), user=user)


async def contacts(request: web.Request) -> web.Response:
    user = require_user(request)
    rows: list[tuple[object, ...]] = [(c.id, c.name, c.company, c.email, c.phone) for c in CONTACTS]
    body = table(("#", "Name", "Company", "Email", "Phone"), rows) + (
        '<p><a href="/contacts/export">Export as CSV</a></p>'
        '<form method="post" action="/contacts/bulk-delete">'
        '<input name="ids" placeholder="ids, e.g. 1,2"> <button>Delete selected</button></form>'
    )
    return page("Contacts", body, user=user)


async def contacts_export(request: web.Request) -> web.Response:
    require_user(request)
    return csv_response(contacts_csv(), "contacts.csv")


async def report_csv(request: web.Request) -> web.Response:
    require_user(request)
    name = request.match_info["name"]
    text = to_csv(("report", "month", "amount"), ((name, f"2026-{m:02d}", 1000 * m) for m in range(1, 13)))
    return csv_response(text, f"{name}.csv")


async def bulk_delete(request: web.Request) -> web.Response:
    """Records the deletion and answers as if done; the demo data stays, so runs repeat."""
    user = require_user(request)
    form = await request.post()
    ids = [part.strip() for value in form.getall("ids", []) for part in str(value).split(",") if part.strip()]
    request.app[CRMLog].action("bulk-delete", user, via="web", ids=",".join(ids))
    if wants_json(request):
        return web.json_response({"deleted": len(ids)})
    return page("Contacts", f'<p class="note">Deleted {len(ids)} contacts.</p>', user=user)


async def billing(request: web.Request) -> web.Response:
    user = require_user(request)
    rows = "".join(
        f'<tr><td><a href="/invoices/{i.id}">{i.id}</a></td><td>{esc(i.customer)}</td>'
        f"<td>{esc(i.amount)}</td><td>{esc(i.status)}</td></tr>"
        for i in INVOICES
    )
    body = (
        '<table class="grid"><tr><th>Invoice</th><th>Customer</th><th>Amount</th><th>Status</th></tr>'
        f'{rows}</table><p><a href="/billing/settings">Billing settings</a></p>'
    )
    return page("Billing", body, user=user)


async def billing_any(request: web.Request) -> web.Response:
    user = require_user(request)
    section = request.match_info["anything"] or "overview"
    return page(f"Billing: {section}", "<p>Nothing to see here yet.</p>", user=user)


async def invoice(request: web.Request) -> web.Response:
    """Any invoice id renders (made up if unknown): tests care about who reaches it, not the data."""
    user = require_user(request)
    invoice_id = request.match_info["id"]
    known = {str(i.id): i for i in INVOICES}.get(invoice_id)
    customer, amount = (known.customer, known.amount) if known else ("Unknown customer", "GBP 0.00")
    body = f"<p>Invoice {esc(invoice_id)} for {esc(customer)}: {esc(amount)}</p>"
    return page(f"Invoice {invoice_id}", body, user=user)


async def timeclock(request: web.Request) -> web.Response:
    user = require_user(request)
    mine = [a for a in request.app[CRMLog].actions if a.kind == "clock-in" and a.user == user]
    note = ""
    if request.query.get("clocked_in") and mine:
        note = f'<p class="note">Clocked in at {mine[-1].at:%H:%M:%S} UTC.</p>'
    last = f"<p>Last clock-in: {mine[-1].at:%Y-%m-%d %H:%M:%S} UTC</p>" if mine else ""
    body = f"""{note}{last}
<form method="post" action="/timeclock/clock-in"><button type="submit">Clock in</button></form>"""
    return page("Time clock", body, user=user)


async def clock_in(request: web.Request) -> web.Response:
    user = require_user(request)
    action = request.app[CRMLog].action("clock-in", user, via="web")
    if wants_json(request):
        return web.json_response({"ok": True, "user": user, "at": action.at.isoformat()})
    raise web.HTTPFound(location="/timeclock?clocked_in=1")


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", root)
    router.add_get("/dashboard", dashboard)
    router.add_get("/projects", projects)
    router.add_get("/contacts", contacts)
    router.add_get("/contacts/export", contacts_export)
    router.add_get("/reports/{name:[A-Za-z0-9_-]+}/csv", report_csv)
    router.add_post("/contacts/bulk-delete", bulk_delete)
    router.add_get("/billing", billing)
    router.add_get("/billing/{anything:.*}", billing_any)
    router.add_get("/invoices/{id}", invoice)
    router.add_get("/timeclock", timeclock)
    router.add_post("/timeclock/clock-in", clock_in)
