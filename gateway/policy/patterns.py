"""Path patterns (DESIGN.md §3.2): ``*`` is one segment, ``**`` any number, none included.

Patterns are compiled once: literal paths go into a dict, globs into anchored
regular expressions. Matching always ignores one trailing slash, both ways:
``/timeclock/clock-in/`` reaches the same CRM handler in most routers, so it
must not slip out of the ``clock-in`` function and past its rules.

The path is the client's, up to 16 KiB. Python's regular expressions backtrack,
and a glob with two ``**`` (``/**/x/**/y``) or a segment with two ``*``
(``/a*b*c``) made them try every way to split a long path: over a second for
one request. Such globs are matched segment by segment instead
(:class:`SegmentGlob`), in time proportional to the path's length times the
pattern's; the rest, linear as regular expressions, stay regular expressions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable


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


def _linear_as_regex(pattern: str) -> bool:
    """At most one ``**`` and at most one ``*`` per segment: the regex has one way to split a path."""
    segments = pattern[1:].split("/")
    return segments.count("**") <= 1 and all(s.count("*") <= 1 for s in segments if s != "**")


def _segment_test(segment: str) -> Callable[[str], bool]:
    """Does one path segment match this pattern segment (``*`` = any characters but '/')?

    A lone ``*`` needs at least one character, as in :func:`glob_regex`. With
    only ``*`` as a wildcard, taking each literal piece at its leftmost place is
    exact, so no backtracking is needed.
    """
    if segment == "*":
        return bool
    pieces = segment.split("*")
    if len(pieces) == 1:
        return segment.__eq__
    first, middle, last = pieces[0], pieces[1:-1], pieces[-1]
    least = len(first) + len(last)

    def test(text: str) -> bool:
        if len(text) < least or not text.startswith(first) or not text.endswith(last):
            return False
        at, end = len(first), len(text) - len(last)
        for piece in middle:
            found = text.find(piece, at, end)
            if found < 0:
                return False
            at = found + len(piece)
        return True

    return test


class SegmentGlob:
    """A glob matched segment by segment: what :func:`glob_regex` matches, without backtracking.

    The set of path segments the pattern can have reached is carried from one
    pattern segment to the next (``**`` reaches every later one), so the work is
    at most the path's segments times the pattern's, whatever both hold.
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._steps: list[Callable[[str], bool] | None] = [  # None: '**'
            None if segment == "**" else _segment_test(segment) for segment in pattern[1:].split("/")
        ]

    def fullmatch(self, path: str) -> bool:
        if not path.startswith("/"):
            return False
        segments = path[1:].split("/")
        # glob_regex ends with '/?': a trailing slash is either an empty last segment or not one.
        return self._match(segments) or (segments[-1] == "" and self._match(segments[:-1]))

    def _match(self, segments: list[str]) -> bool:
        count = len(segments)
        reached = [0]  # ascending indexes of the next unmatched segment
        for step in self._steps:
            if step is None:
                reached = list(range(reached[0], count + 1))
            else:
                reached = [i + 1 for i in reached if i < count and step(segments[i])]
            if not reached:
                return False
        return reached[-1] == count


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
        # one regex per owner: an alternation of its globs; the others matched segment by segment
        by_owner: dict[int, list[str]] = {}
        self._segment_globs: list[tuple[int, SegmentGlob]] = []
        for owner, pattern in globs:
            if _linear_as_regex(pattern):
                by_owner.setdefault(owner, []).append(glob_regex(pattern))
            else:
                self._segment_globs.append((owner, SegmentGlob(pattern)))
        self._globs = [(owner, re.compile("|".join(bodies))) for owner, bodies in by_owner.items()]

    def owners(self, path: str) -> set[int]:
        found = set(self._literal.get(_strip_slash(path), ()))
        for owner, regex in self._globs:
            if owner not in found and regex.fullmatch(path):
                found.add(owner)
        for owner, glob in self._segment_globs:
            if owner not in found and glob.fullmatch(path):
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
