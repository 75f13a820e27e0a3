"""Server-rendered pages the way an old CRM makes them: one layout, no external assets."""

from __future__ import annotations

import html

from aiohttp import web

_STYLE = (
    "body{font-family:Verdana,sans-serif;font-size:13px;margin:0;background:#eef}"
    "#top{background:#336;color:#fff;padding:6px 12px}#top a{color:#fff;margin-right:12px}"
    "#main{padding:12px}table.grid{border-collapse:collapse;background:#fff}"
    ".grid td,.grid th{border:1px solid #99c;padding:3px 8px}.error{color:#b00}.note{color:#060}"
)

_NAV = (
    ("/dashboard", "Dashboard"),
    ("/projects", "Projects"),
    ("/contacts", "Contacts"),
    ("/billing", "Billing"),
    ("/timeclock", "Time clock"),
    ("/logout", "Log out"),
)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, user: str | None = None, status: int = 200) -> web.Response:
    """A whole page; ``body`` is HTML the caller has already escaped."""
    nav = ""
    if user is not None:
        links = "".join(f'<a href="{href}">{label}</a>' for href, label in _NAV)
        nav = f"{links}<span>Logged in as {esc(user)}</span>"
    document = (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)} - Demo CRM</title><style>{_STYLE}</style></head>\n"
        f'<body><div id="top"><b>Demo CRM</b> &nbsp; {nav}</div>\n'
        f'<div id="main"><h1>{esc(title)}</h1>\n{body}\n</div></body></html>\n'
    )
    return web.Response(text=document, content_type="text/html", status=status)


def table(headings: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="grid"><tr>{head}</tr>{body}</table>'
