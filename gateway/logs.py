"""Structured logging: JSON lines on stdout, secrets removed before rendering.

Every event goes through :func:`redact`, so a password, TOTP code, cookie or
``Authorization`` value passed by mistake is replaced by ``[redacted]`` rather
than written out.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from gateway.headers import SECRET_HEADERS

_SECRET_KEYS = frozenset(
    {"password", "passwd", "code", "totp", "otp", "secret", "token", "csrf_token", "session", *SECRET_HEADERS}
)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "[redacted]" if str(key).lower() in _SECRET_KEYS else _scrub(item) for key, item in value.items()
        }
    if isinstance(value, list | tuple) and value and isinstance(value[0], list | tuple) and len(value[0]) == 2:
        return [
            (name, "[redacted]" if str(name).lower() in _SECRET_KEYS else item) for name, item in value
        ]
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop the values of secret-named keys at any depth."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(event[key], dict | list | tuple):
            event[key] = _scrub(event[key])
    return event


_output: Any = None  # where the lines go, kept when a reload changes the level or the format


def configure(*, level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Configure structlog: at start, and on a reload that changed the ``logging`` section (:func:`reconfigure`)."""
    global _output
    _output = stream or sys.stdout
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        # One write() per line: workers share stdout, and with PYTHONUNBUFFERED (as in the
        # image) print() writes the line and its newline separately, so lines interleave.
        logger_factory=structlog.WriteLoggerFactory(_output),
        cache_logger_on_first_use=False,
    )


def reconfigure(*, level: str, fmt: str) -> None:
    """A new level or format, lines still written where they were."""
    configure(level=level, fmt=fmt, stream=_output)


def get_logger(name: str) -> Any:
    """A logger whose every line names the part of the gateway that wrote it."""
    # Initial values, not bind(): bind() would assemble the logger now, with whatever
    # configuration exists at import time, instead of at each use.
    return structlog.get_logger(component=name)
