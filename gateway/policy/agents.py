"""User-Agent patterns (``channels.<name>.user_agents``), matched by RE2 in time linear in the header.

The patterns are searched, case-insensitively, in a header every client
writes as it likes (up to 16 KiB). With Python's backtracking ``re`` one
careless pattern, e.g. ``(a+)+$`` or ``(.*,)*x``, takes exponential time on a
crafted User-Agent: any anonymous client could stall a worker with one
request. RE2 (Google's, through ``google-re2``) has no backtracking; the price
is that lookarounds and backreferences are not supported, and such a pattern
is a problem ``check`` reports at its ``file:line``, never a surprise at request
time. Everything else ordinary patterns use (anchors, classes, ``\\d``,
alternation, repetition, ``(?i)``) means the same.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2  # type: ignore[import-untyped]  # (google-re2 ships no type information)


class AgentPattern(Protocol):
    def search(self, text: str) -> Any: ...


_OPTIONS = re2.Options()
_OPTIONS.case_sensitive = False
_OPTIONS.log_errors = False  # the reason is in the exception; RE2 would also print it to stderr


def compile_agent(pattern: str) -> AgentPattern:
    """The compiled pattern; ValueError saying why RE2 refuses it."""
    try:
        compiled: AgentPattern = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        if reason.startswith(("invalid perl operator", "invalid escape sequence")):
            reason += " (user_agents are RE2 patterns: no lookarounds or backreferences)"
        raise ValueError(reason) from None
    return compiled
