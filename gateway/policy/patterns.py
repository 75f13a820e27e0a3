"""Path patterns (DESIGN.md §3.2): ``*`` is one segment, ``**`` any number, none included.

Patterns are compiled once: literal paths go into a dict, globs into anchored
regular expressions. Matching always ignores one trailing slash, both ways:
``/timeclock/clock-in/`` reaches the same CRM handler in most routers, so it
must not slip out of the ``clock-in`` function and past its rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class PatternError(ValueError):
    """A path pattern that cannot be compiled; the message is for the admin."""


def _strip_slash(path: str) -> str:
    return path.rstrip("/") or "/"


def glob_regex(pattern: str) -> str:
    """Translate one glob to a regex body (without anchors), segment by segment."""
    if not pattern.startswith("/"):
        raise PatternError(f"a path pattern must start with '/', got {pattern!r}")
    parts: list[str] = []
    for segment in pattern[1:].split("/"):
        if segment == "**":
            parts.append("(?:/[^/]*)*")
        elif "**" in segment:
            raise PatternError(f"'**' must be a whole segment, as in '/a/**/b', got {pattern!r}")
        elif segment == "*":
            parts.append("/[^/]+")
        else:
            parts.append("/" + "".join("[^/]*" if ch == "*" else re.escape(ch) for ch in segment))
    return "".join(parts) + "/?"


class PathMatcher:
    """Which owners (functions, channels) a path belongs to, from their patterns."""

    def __init__(self, owned_patterns: Iterable[tuple[int, str]], *, lower: bool) -> None:
        """``owned_patterns``: (owner index, pattern) pairs, already validated."""
        self._literal: dict[str, list[int]] = {}
        globs: list[tuple[int, str]] = []
        for owner, raw in owned_patterns:
            pattern = raw.lower() if lower else raw
            if "*" in pattern:
                globs.append((owner, pattern))
            else:
                self._literal.setdefault(_strip_slash(pattern), []).append(owner)
        # one regex per owner: an alternation of its globs
        by_owner: dict[int, list[str]] = {}
        for owner, pattern in globs:
            by_owner.setdefault(owner, []).append(glob_regex(pattern))
        self._globs = [(owner, re.compile("|".join(bodies))) for owner, bodies in by_owner.items()]

    def owners(self, path: str) -> set[int]:
        found = set(self._literal.get(_strip_slash(path), ()))
        for owner, regex in self._globs:
            if owner not in found and regex.fullmatch(path):
                found.add(owner)
        return found


def check_pattern(pattern: str) -> None:
    """Raise PatternError if the pattern cannot be used (called by the loader)."""
    re.compile(glob_regex(pattern))


def sample_path(pattern: str) -> str:
    """A concrete path the pattern matches (for ``check``'s simulated requests)."""
    segments = []
    for segment in pattern[1:].split("/"):
        if segment == "**":
            continue
        segments.append(segment.replace("*", "x"))
    return "/" + "/".join(segments)
