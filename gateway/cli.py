"""``crm-gateway``: serve, demo, check, explain, totp enroll, overrides (DESIGN.md §1)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from gateway import __version__
from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.server import Server
    from gateway.settings import Settings


def _load_or_exit(path: str) -> Config:
    # Imported here: the ``serve --workers N`` parent must not import (or hold) the policy.
    from gateway.config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        _exit_with_problems(exc)


def _load_settings_or_exit(path: str) -> Settings:
    from gateway.settings import load_settings

    try:
        return load_settings(Path(path).absolute())
    except ConfigError as exc:
        _exit_with_problems(exc)


def _exit_if_unshared(settings: Settings, workers: int) -> None:
    """Exit 1, saying why, when ``workers`` processes may not run on these settings (the cookie store's state)."""
    from gateway.settings import unshared_state

    if (why := unshared_state(settings, workers=workers)) is not None:
        print(why, file=sys.stderr)
        raise SystemExit(1)


def _exit_if_bad_key(settings: Settings) -> None:
    """Exit 1 with one line when the cookie store's session key is there but malformed (not a traceback at start)."""
    if settings.session.store != "cookie":
        return
    from gateway.sessions import read_secret_key

    try:
        read_secret_key(settings.session)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def _exit_with_problems(exc: ConfigError) -> NoReturn:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    raise SystemExit(1) from None


def cmd_serve(args: argparse.Namespace) -> int:
    if args.workers > 1 and not args.validate_only:
        return _serve_workers(args)
    if args.validate_only:  # the workers parent's check, run in a child of its own
        _load_or_exit(args.config)
        return 0
    # A SIGHUP before the server handles it would kill this process (its default action): the
    # files are read just below anyway, and the watcher reloads any edit made meanwhile.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # No local here may hold the start-up config while the server runs: after a reload it would
    # keep the policy it started with in memory for good (~90 MiB at 100,000 rules).
    return asyncio.run(_server(args).run())


def _server(args: argparse.Namespace) -> Server:
    """The one-process gateway, its config loaded and its logging and event loop set up."""
    config = _load_or_exit(args.config)
    _exit_if_unshared(config.settings, args.worker_count)  # a worker (re)started after an edit, as a reload
    _exit_if_bad_key(config.settings)
    # Imported after the load: their objects then fill the holes the load's temporaries left
    # (imported first, idle RSS is ~3 MiB higher at 100,000 rules).
    from gateway import logs
    from gateway.server import Server, install_event_loop_policy

    logs.configure(level=config.settings.logging.level, fmt=config.settings.logging.format)
    install_event_loop_policy()
    return Server(
        config_path=Path(args.config),
        config=config,
        worker=args.worker_index,
        workers=args.worker_count,
        drain_timeout=args.drain_timeout,
        reuse_port=args.reuse_port,
    )


def _serve_workers(args: argparse.Namespace) -> int:
    """The ``--workers N`` parent: it reads the main file (for its logging) but never the policy.

    The whole config is checked first in a throwaway child (``serve --validate-only``) that
    prints any problem as ``file:line: message``; only then are the workers spawned, so a bad
    config exits 1 with no worker started, and the parent's memory does not grow with the rules.
    """
    from gateway import logs
    from gateway.workers import run_workers, validate

    settings = _load_settings_or_exit(args.config)
    verdict = validate(args.config)
    if verdict != "valid":
        return 0 if verdict == "stopped" else 1
    _exit_if_unshared(settings, args.workers)
    logs.configure(level=settings.logging.level, fmt=settings.logging.format)
    return run_workers(args.config, workers=args.workers, drain_timeout=args.drain_timeout)


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(port=args.port, config_dir=Path(args.config_dir) if args.config_dir else None)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    from gateway.checks import warnings_for

    _exit_if_unshared(config.settings, args.workers)
    _exit_if_bad_key(config.settings)
    warnings = warnings_for(config, now=datetime.now(UTC))
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    settings = config.settings
    print(
        f"ok: {settings.path} and {len(settings.policy_files)} policy file(s) are valid; "
        f"{config.policy.rule_count} rules, {len(warnings)} warning(s)"
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.client_ip import BadClientAddress, parse_address
    from gateway.paths import BadPath, normalise_path, split_target
    from gateway.policy import RequestFacts, explain_json, format_explain

    config = _load_or_exit(args.config)
    try:
        client_ip = parse_address(args.ip)
    except BadClientAddress as exc:
        print(f"--ip: {exc}", file=sys.stderr)
        return 2
    try:
        raw_path, _query = split_target(args.path)
        path = normalise_path(raw_path, case_insensitive=config.settings.case_insensitive_paths)
    except BadPath as exc:
        print(f"--path: would be answered 400 bad_request: {exc}", file=sys.stderr)
        return 2
    at = datetime.now(UTC)
    if args.at:
        try:
            at = datetime.fromisoformat(args.at)
        except ValueError:
            print(f"--at: not an ISO-8601 date-time: {args.at!r}", file=sys.stderr)
            return 2
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
    facts = RequestFacts(
        client_ip=client_ip,
        method=args.method.upper(),
        path=path.match,
        user_agent=args.user_agent,
        user=args.user,
        at=at,
    )
    decision = config.policy.decide(facts, explain=True)
    if args.json:
        print(json.dumps(explain_json(facts, decision), indent=2, default=str))
    else:
        print(format_explain(facts, decision))
    return 0


def cmd_totp_enroll(args: argparse.Namespace) -> int:
    from gateway.totp import enroll_command

    return enroll_command(_load_or_exit(args.config), args.user, force=args.force)


def cmd_overrides(args: argparse.Namespace) -> int:
    config = _load_or_exit(args.config)
    print(config.policy.overrides_report(datetime.now(UTC), args.review_days))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crm-gateway", description="Location-aware access gateway in front of a legacy CRM."
    )
    parser.add_argument("--version", action="version", version=f"crm-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("-c", "--config", required=True, help="main config file (gateway.yaml)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes sharing the port")
    serve.add_argument("--drain-timeout", type=float, default=30.0,
                       help="seconds in-flight requests get to finish on SIGTERM (default 30)")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    serve.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)  # how many share the port
    serve.add_argument("--validate-only", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="run the bundled demo CRM with a gateway in front of it")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument("--config-dir", help="example config folder (default: ./config)")
    demo.set_defaults(func=cmd_demo)

    check = sub.add_parser("check", help="validate config files and warn about lock-out risks")
    check.add_argument("-c", "--config", required=True)
    check.add_argument("--workers", type=int, default=1, help="workers you intend to run")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show how a request would be decided, rule by rule")
    explain.add_argument("-c", "--config", required=True)
    explain.add_argument("--ip", required=True, help="client IP")
    explain.add_argument("--user", help="username (none: anonymous)")
    explain.add_argument("--user-agent", default="Mozilla/5.0", help="User-Agent (default: a browser)")
    explain.add_argument("--method", default="GET")
    explain.add_argument("--path", required=True)
    explain.add_argument("--at", help="ISO-8601 time (default: now)")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.set_defaults(func=cmd_explain)

    totp = sub.add_parser("totp", help="TOTP second factor")
    totp_sub = totp.add_subparsers(dest="totp_command", required=True, metavar="ACTION")
    enroll = totp_sub.add_parser("enroll", help="create a secret for USER and print its QR code")
    enroll.add_argument("user")
    enroll.add_argument("-c", "--config", required=True)
    enroll.add_argument("--force", action="store_true", help="replace an existing secret")
    enroll.set_defaults(func=cmd_totp_enroll)

    overrides = sub.add_parser("overrides", help="list per-user overrides for review")
    overrides.add_argument("-c", "--config", required=True)
    overrides.add_argument("--review-days", type=int, default=90)
    overrides.set_defaults(func=cmd_overrides)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        # `crm-gateway explain ... | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return result


if __name__ == "__main__":
    raise SystemExit(main())
