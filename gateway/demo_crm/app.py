"""Assemble the demo CRM, run it in-process for tests, or from the command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.demo_crm import api, instrument, pages, sessions, testbench
from gateway.demo_crm.record import DEFAULT_LIMIT, CRMLog, CRMRecord
from gateway.demo_crm.sessions import DEMO_PASSWORD, DEMO_USERS, Sessions, SessionStore

DEFAULT_PORT = 8001
# No Referer, no cookies, no headers: the access log holds nothing secret.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'


def create_app(
    *, users: Mapping[str, str] | None = None, record_limit: int = DEFAULT_LIMIT
) -> web.Application:
    """A fresh demo CRM; ``users`` maps username to password (default: :data:`DEMO_USERS`)."""
    app = web.Application(middlewares=[instrument.record_requests])
    app[CRMLog] = CRMRecord(record_limit)
    app[Sessions] = SessionStore(DEMO_USERS if users is None else users)
    app.router.add_get("/login", sessions.login_form)
    app.router.add_post("/login", sessions.login_submit)
    app.router.add_route("GET", "/logout", sessions.logout)
    app.router.add_route("POST", "/logout", sessions.logout)
    pages.add_routes(app)
    api.add_routes(app)
    testbench.add_routes(app)
    instrument.add_routes(app)
    return app


async def start(host: str = "127.0.0.1", port: int = 0, **kw: Any) -> tuple[web.AppRunner, int]:
    """Serve a new demo CRM on ``host:port`` (0: any free port); returns the runner and the bound port.

    ``kw`` goes to :func:`create_app`. Stop it with ``await runner.cleanup()``; the
    record is ``runner.app[CRMLog]``.
    """
    runner = web.AppRunner(create_app(**kw), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    return runner, int(bound)


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway.demo_crm --host 127.0.0.1 --port 8001``."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo_crm",
        description="The bundled demo CRM: a small legacy-style CRM to put crm-gateway in front of.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    users = ", ".join(DEMO_USERS)
    print(
        f"Demo CRM on http://{args.host}:{args.port}/  users: {users} "
        f"(password {DEMO_PASSWORD!r}: demo only)",
        flush=True,
    )
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log_format=ACCESS_LOG_FORMAT,
        print=None,
    )
