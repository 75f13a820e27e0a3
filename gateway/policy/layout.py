"""Where the items of a big policy file's ``rules`` list are, so an edit can be read as an edit.

A 100,000-rule file takes seconds to read whole, mostly YAML events and rule
specs; an admin's edit touches one or a few rules. The file's text is cut at
its ``rules`` items (:func:`split_items`): each item is one line at the list's
column starting with ``-``, up to the next. A reload compares the new cut
with the old one by the items' digests (:func:`changed_run`, :func:`moved_items`)
and reads only the items it has not seen (:mod:`gateway.policy.sources`).

The cut is trusted only where it cannot misread the file:

- ``rules`` is a top-level key on a line of its own; its items, blank lines
  and comments follow it up to the next top-level key (a plain ``name:`` at
  the first column) or the end. The text around the items (the other
  sections, the key, blank lines and comments) is compared by its digest too,
  and read on its own when it changed, or when sections after the list moved
  to other lines;
- no tab and no line break other than ``\\n`` (YAML also breaks lines at
  U+0085, U+2028 and U+2029, which would shift every line number);
- when the file was read whole, its parsed ``rules`` list had exactly these
  items, each a mapping starting on its dash's line (:func:`items_agree`), and
  the file was clean and plain (no anchors, aliases or tags: an alias in an
  unchanged item may refer to an anchor in an edited one).

The new items are parsed together, in one parse of their text with the lines
between them left out (:meth:`Items.runs_text`), and the changed other sections
on their own; they must be as plain and clean, or the file is read whole.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

DIGEST_SIZE = 16  # bytes of BLAKE2b per item: equal digests stand for equal texts

_RULES_KEY = re.compile(r"\nrules:[ ]*(?:#[^\n]*)?\n")  # after a newline: a literal search, fast
_NOT_BLANK = re.compile(r"^[ ]*[^ #\n]", re.MULTILINE)  # a line with something other than a comment
_OTHER_BREAKS = ("\t", "\x85", "\u2028", "\u2029")
_TOP_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*:(?:[ ]|\n|$)")  # a plain top-level key after the rules list


@dataclass(frozen=True, slots=True)
class Items:
    """A file's text cut at its ``rules`` items."""

    others: bytes  # digest of the text around the items: before the first, after the list's end
    indent: int  # column of the items' dashes
    starts: array[int]  # offset of each item in the text
    end: int  # where the list ends: the next top-level key, or the end of the text
    after: int  # the line of that key (0: none, the list ends the file)
    lines: array[int]  # 1-based line of each item's dash
    digests: bytes  # DIGEST_SIZE bytes per item, of its text up to the next item (or the list's end)

    def others_text(self, text: str) -> str:
        """The text with the items' lines left blank: the other sections, each on its own line."""
        start = self.starts[0]
        return text[:start] + "\n" * text.count("\n", start, self.end) + text[self.end:]

    def runs_text(self, text: str, runs: Sequence[tuple[int, int]]) -> tuple[str, int]:
        """The text of items ``[a, b)`` for each run, and the line it starts at: one YAML list.

        Between runs each line of the items left out is a comment line, so every
        item keeps its line. A comment, not a blank line: blank lines after a
        kept (``|+``) block scalar would become part of its value.
        """
        pieces: list[str] = []
        first = line = self.lines[runs[0][0]]
        for a, b in runs:
            pieces.append("#\n" * (self.lines[a] - line))
            end = self.starts[b] if b < len(self.starts) else self.end
            pieces.append(text[self.starts[a]:end])
            line = self.lines[b] if b < len(self.lines) else 0  # (the last run: nothing follows)
        return "".join(pieces), first


@dataclass(frozen=True, slots=True)
class Layout:
    """What a reload keeps of a clean file read before (~30 bytes an item).

    Item ``k`` made ``source.rules[k]`` (the file was clean: every item made a
    rule) and the references ``ref_starts[k]:ref_starts[k + 1]`` of the source's
    columns; those before ``ref_starts[0]`` are the other sections'.
    """

    others: bytes
    indent: int
    after: int
    lines: array[int]
    digests: bytes
    ref_starts: array[int]  # one more entry than items: the end of the last item's references

    @classmethod
    def of(cls, items: Items, ref_starts: array[int]) -> Layout:
        return cls(items.others, items.indent, items.after, items.lines, items.digests, ref_starts)


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=DIGEST_SIZE).digest()


def split_items(text: str) -> Items | None:
    """The text cut at its ``rules`` items, or None where the cut could misread it (see the module docstring)."""
    keys = [found.end() for found in _RULES_KEY.finditer(text)]
    on_first_line = _RULES_KEY.match("\n" + text[:200])
    if on_first_line is not None:
        keys.append(on_first_line.end() - 1)
    if len(keys) != 1 or any(other in text for other in _OTHER_BREAKS):
        return None
    first = _NOT_BLANK.search(text, keys[0])
    if first is None:
        return None
    start = first.start()
    indent = first.end() - 1 - start
    if text[first.end() - 1] != "-":
        return None
    # every line up to the list's end: an item's dash at `indent`, blank, a comment, or deeper than `indent`
    item = rf"\n[ ]{{{indent}}}-(?=[ \n]|$)"
    other = re.compile(rf"\n(?!{item[2:]})(?![ ]*#)[ ]{{0,{indent}}}[^ \n]").search(text, start - 1)
    end = len(text) if other is None else other.start() + 1
    if end < len(text) and _TOP_KEY.match(text, end) is None:
        return None  # not the next section: an item's text at the wrong column, a document marker...
    starts = array("Q", [found.start() + 1 for found in re.compile(item).finditer(text, start - 1, end)])
    lines = array("I")
    line = text.count("\n", 0, start) + 1
    previous = start
    digests = bytearray()
    ends = [*starts[1:], end]
    for offset, item_end in zip(starts, ends, strict=True):
        line += text.count("\n", previous, offset)
        previous = offset
        lines.append(line)
        digests += _digest(text[offset:item_end])
    after = line + text.count("\n", previous, end) if end < len(text) else 0
    return Items(_digest(text[:start] + "\0" + text[end:]), indent, starts, end, after, lines, bytes(digests))


def items_agree(items: Items, parsed_lines: Sequence[int]) -> bool:
    """Whether a read's ``rules`` list (the line of each item) is exactly the cut's items."""
    return list(parsed_lines) == items.lines.tolist()


def changed_run(old: bytes, new: bytes) -> tuple[int, int, int]:
    """``(p, q, s)`` for the items' digests before and after an edit.

    New items ``[0, p)`` are old ``[0, p)``, new ``[q, n)`` are old
    ``[m - s, m)`` (``s = n - q``); the run between, new ``[p, q)``, is what the
    edit changed (items inserted, removed or rewritten there). Typical edits
    (one rule changed, one appended, one removed) make it zero or one item long;
    edits at several places make it span them all (see :func:`moved_items`).
    """
    size = DIGEST_SIZE
    n, m = len(new) // size, len(old) // size
    limit = min(n, m)
    low, high = 0, limit  # the longest common run of whole digests from the start: binary search, memcmp each
    while low < high:
        middle = (low + high + 1) // 2
        if new[:middle * size] == old[:middle * size]:
            low = middle
        else:
            high = middle - 1
    p = low
    low, high = 0, limit - p  # and from the end, not reaching into the first run
    while low < high:
        middle = (low + high + 1) // 2
        if new[(n - middle) * size:] == old[(m - middle) * size:]:
            low = middle
        else:
            high = middle - 1
    s = low
    return p, n - s, s


def moved_items(old: bytes, new: bytes, p: int, q: int, r: int) -> list[tuple[int, int, int]]:
    """Runs ``(a, b, j)`` of the changed run whose items are old ones: new ``[a, b)`` are old ``[j, j + b - a)``.

    Within new ``[p, q)`` and old ``[p, r)`` (the runs :func:`changed_run` found changed), each
    new item is looked up among the old ones by its digest: edits at two far places,
    or a block of rules moved, leave most of the run unchanged. Runs are in new order
    and maximal (consecutive new items that were consecutive old ones).
    """
    size = DIGEST_SIZE
    place = {old[j * size:(j + 1) * size]: j for j in range(r - 1, p - 1, -1)}  # the first of equal items
    runs: list[tuple[int, int, int]] = []
    for k in range(p, q):
        j = place.get(new[k * size:(k + 1) * size])
        if j is None:
            continue
        if runs and runs[-1][1] == k and runs[-1][2] + k - runs[-1][0] == j:
            runs[-1] = (runs[-1][0], k + 1, runs[-1][2])
        else:
            runs.append((k, k + 1, j))
    return runs
