"""Policy files read one by one, so a reload re-reads only the files that changed.

Each policy file is read and checked on its own into a :class:`PolicySource`,
keyed by its path and the SHA-256 of its bytes. A reload hands the previous
policy's sources to :func:`read_sources`, which reuses every source whose file
is byte-for-byte unchanged: editing ``people.yaml`` no longer re-parses a
100,000-rule ``generated.yaml``. What spans files (a name defined twice, a
reference to a name another file defines, the ``mobile`` channel that
``mobile_any_ip`` needs) is checked by :func:`merge_sources` on every load, from
compact tables kept in each source.

A name defined in two files is the one case merged sources cannot report
exactly as one reader walking the files in order would (which definition comes
"first" depends on the order the files are read in); :func:`merge_sources` then
returns None and the caller reads all files together, as before.

A large file is read in a short-lived child process (:func:`_read_isolated`),
which hands back the compact source as a pickle: the YAML values of a 12 MB file
take several hundred MiB while they exist, and memory a process has once
grown to is not given back to the system, so the serving process never holds
them. Small files, and any failure to run the child, are read in-process.

An edit of a big file is read as an edit (:func:`read_edit`): its text is cut
at its ``rules`` items (:mod:`gateway.policy.layout`), and only the items whose
text the previous read did not have are parsed (in this process, or when there
are many in child processes, two side by side, started before the cut), with the
other sections if they changed; the other rules are reused as they are, wherever
the edit moved them (their lines are a column beside them, moved with them).
The result is exactly what reading the file whole would give, or the file is
read whole.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import threading
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from itertools import islice
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from gateway.policy.layout import Items, Layout, changed_run, items_agree, moved_items, split_items
from gateway.policy.loader import NO_MOBILE_CHANNEL, _Reader, unknown_reference
from gateway.policy.networks import NetEntry
from gateway.policy.spec import (
    DEFAULT_CHANNEL,
    MOBILE_CHANNEL,
    ChannelSpec,
    DefaultsSpec,
    Expiry,
    FunctionSpec,
    GroupSpec,
    PolicySpec,
    RuleSpec,
    UserSpec,
)
from gateway.yamlsrc import ConfigError, Problem, Problems, Where, parse_plain, parse_yaml_noting_plain
from gateway.yamlsrc import Mapping as YamlMapping
from gateway.yamlsrc import Sequence as YamlSequence

# Files at least this big are read in a child process (see the module docstring).
ISOLATE_BYTES = 1 << 20
# An edit of a big file writing more new rules than this has them read in a child process (see read_edit).
EDIT_ITEMS = 2000
# How many children read a big edit's new rules side by side (their start-up overlaps the cut).
CHILDREN = 2
# Children yield the CPU to the serving process: requests first, the reload after.
CHILD_NICENESS = 10
# A child reading a file that has not answered after this long is killed (and the file read another way).
CHILD_TIMEOUT = 600.0
# The child pickles a big file's rules in chunks of this many, each with its own memo (see _child).
PICKLE_CHUNK = 2000
_T = TypeVar("_T")
_REF_KINDS = ("function", "channel", "group", "user")
_NAME_KINDS = ("channel", "function", "group", "user")


@dataclass(frozen=True, slots=True)
class PolicySource:
    """One policy file, read and checked on its own; what a reload reuses while the file is unchanged."""

    path: str
    digest: bytes  # SHA-256 of the file's bytes
    geoip: bool  # whether it was read with a GeoIP database configured (countries need one)
    problems: tuple[Problem, ...]  # this file's own problems, in reading order
    channels: tuple[ChannelSpec, ...]
    functions: tuple[FunctionSpec, ...]
    defaults: DefaultsSpec | None
    groups: tuple[GroupSpec, ...]
    users: tuple[UserSpec, ...]
    rules: tuple[RuleSpec, ...]
    rule_lines: array[int]  # the line each rule starts at
    defined: tuple[tuple[str, frozenset[str]], ...]  # kind -> names this file defines (rule ids apart)
    rule_ids: frozenset[str] | None  # the rule ids it defines; None: exactly the ids of `rules`
    group_members: frozenset[str]
    # references to names, in reading order, as three columns (a 100,000-rule file makes ~100,000)
    ref_kinds: bytes  # index into _REF_KINDS
    ref_names: tuple[str, ...]
    ref_lines: array[int]
    mobile_refs: tuple[Where, ...]
    layout: Layout | None  # a big clean file's cut at its rules, for reading an edit as one (see read_edit)

    def names(self, kind: str) -> frozenset[str]:
        if kind == "rule id":
            return self.rule_ids if self.rule_ids is not None else frozenset(rule.id for rule in self.rules)
        return dict(self.defined).get(kind, frozenset())

    def ref_names_of(self, kind: str) -> set[str]:
        """The distinct names this file refers to as ``kind``."""
        code = _REF_KINDS.index(kind)
        return {name for k, name in zip(self.ref_kinds, self.ref_names, strict=True) if k == code}

    def refs(self) -> Iterable[tuple[str, str, Where]]:
        for kind, name, line in zip(self.ref_kinds, self.ref_names, self.ref_lines, strict=True):
            yield _REF_KINDS[kind], name, Where(self.path, line)


def _source(
    reader: _Reader, path: str, digest: bytes, problems: Problems, layout: Layout | None = None
) -> PolicySource:
    """What ``reader`` made of one file, packed."""
    # every place in one file names that file: the column keeps only the line
    assert all(where.file == path for _, _, where in reader.refs), path
    refs = _Columns()
    refs.add(reader.refs)
    rule_ids = frozenset(reader.defined["rule id"])
    clean = len(rule_ids) == len(reader.rules)  # every id defined made a rule
    return PolicySource(
        path=path,
        digest=digest,
        geoip=reader.geoip,
        problems=tuple(problems.items),
        channels=tuple(reader.channels),
        functions=tuple(reader.functions),
        defaults=reader.defaults,
        groups=tuple(reader.groups),
        users=tuple(reader.users),
        rules=tuple(reader.rules),
        rule_lines=reader.rule_lines,
        defined=tuple((kind, frozenset(reader.defined[kind])) for kind in _NAME_KINDS),
        rule_ids=None if clean else rule_ids,
        group_members=frozenset(reader.group_members),
        mobile_refs=tuple(reader.mobile_refs),
        **refs.packed(),
        layout=layout,
    )


def _decode(data: bytes) -> str:
    """The text ``Path.read_text(encoding='utf-8')`` gives for these bytes (newlines translated)."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8").read()


def read_source(
    path: Path, data: bytes, *, geoip: bool, digest: bytes | None = None, cut: bool = False
) -> PolicySource:
    """Read one policy file's bytes in this process; ``cut``: keep its :class:`Layout` if it has one."""
    name = str(path)
    problems = Problems()
    reader = _Reader(problems, geoip=geoip)
    digest = digest if digest is not None else hashlib.sha256(data).digest()
    try:
        text = _decode(data)
    except UnicodeDecodeError as exc:
        problems.add(Where(name, 1), f"cannot read: {exc}")
        return _source(reader, name, digest, problems)
    try:
        parsed, plain = parse_yaml_noting_plain(text, name)
    except ConfigError as exc:
        for problem in exc.problems:
            problems.add(problem.where, problem.message)
        return _source(reader, name, digest, problems)
    if cut and plain:
        reader.item_refs = array("I")
    reader.read_file(parsed, path)
    return _source(reader, name, digest, problems, _layout(text, parsed, reader))


def _layout(text: str, parsed: Any, reader: _Reader) -> Layout | None:
    """The file's cut, if it can be trusted (see :mod:`gateway.policy.layout`) and the file is clean."""
    if reader.item_refs is None or reader.problems.items or not isinstance(parsed, YamlMapping):
        return None
    listed = parsed.get("rules")
    if not isinstance(listed, YamlSequence) or not all(isinstance(item, YamlMapping) for item in listed):
        return None
    items = split_items(text)
    if items is None or not items_agree(items, listed.item_lines) or len(reader.rules) != len(listed):
        return None
    return Layout.of(items, array("I", [*reader.item_refs, len(reader.refs)]))


def read_edit(
    path: Path, data: bytes, digest: bytes, old: PolicySource, *, isolate: bool = True,
    children: Sequence[_Child] = (),
) -> PolicySource | None:
    """``old``'s file after an edit, reading only what the edit changed.

    That is the ``rules`` items whose text is not an old item's (found by their
    digests, wherever the edit moved them), and the other sections if their text
    changed; every other rule is reused as it is (its line moved in
    ``rule_lines`` if it has a new one). More than :data:`EDIT_ITEMS` new items
    are read in child processes (``isolate``; ``children`` when given, started beforehand),
    as a big file read whole is: their YAML values never take room here.

    An edit whose new items have problems (an admin's typo) gives a source with
    exactly the problems, ids and references a whole read would give, and no
    rules (the reload fails with them). Anything else the edit cannot answer
    for exactly (YAML it cannot parse plainly, problems in the other sections,
    an id defined twice) gives None: the caller then reads the file whole.
    """
    layout = old.layout
    if layout is None:
        return None
    try:
        text = _decode(data)
    except UnicodeDecodeError:
        return None
    items = split_items(text)
    if items is None or items.indent != layout.indent:
        return None
    head = None
    if items.others != layout.others or items.after != layout.after:  # other sections changed, or moved
        head = _read_head(items.others_text(text), path, old.geoip)
        if head is None:
            return None
    n, m = len(items.lines), len(layout.lines)
    p, q, s = changed_run(layout.digests, items.digests)
    kept = [(0, p, 0), *moved_items(layout.digests, items.digests, p, q, m - s), (q, n, m - s)]
    # A rule without an id is named by its place: one that moved would be renamed, so it is read again.
    placed = f"{path.stem}.rules["
    kept = [(a, b, j) for a, b, j in kept
            if b > a and (a == j or not any(rule.id.startswith(placed) for rule in old.rules[j:j + b - a]))]
    new = _between(kept, n)
    read = _NOTHING_READ
    if new:
        # in children when many: None when they are not clean, or no child could run (then read whole)
        if isolate and sum(b - a for a, b in new) > EDIT_ITEMS:
            got = _read_runs_isolated(text, items, new, path, old.geoip, children)
        else:
            runs_text, first_line = items.runs_text(text, new)
            lines = [line for a, b in new for line in items.lines[a:b]]
            got = _read_runs(runs_text, first_line, lines, new, path, old.geoip)
        if got is None:
            return None
        read = got

    # the rules and their references, the other sections' first (see Layout), then item by item in runs
    starts = layout.ref_starts
    refs = _Columns()
    if head is None:
        refs.copy(old, 0, starts[0], 0)
    else:
        refs.add(head.refs)
    rules: list[RuleSpec] = []
    rule_lines = array("I")
    ref_starts = array("I")
    done = 0  # new items taken from `read`
    for a, b, j in sorted([*kept, *((a, b, -1) for a, b in new)]):
        count = b - a
        if j >= 0:  # new items [a, b) are old [j, j + count), moved by `shift` lines
            shift = items.lines[a] - layout.lines[j]
            rules += old.rules[j:j + count]
            rule_lines += _moved(old.rule_lines[j:j + count], shift)
            ref_starts.extend(start + len(refs) - starts[j] for start in starts[j:j + count])
            refs.copy(old, starts[j], starts[j + count], shift)
        else:  # new items, read
            first = read.ref_starts[done]
            if not read.problems:  # one rule an item (with problems, some made none: the rules are not kept)
                rules += read.rules[done:done + count]
                rule_lines += read.rule_lines[done:done + count]
            ref_starts.extend(start + len(refs) - first for start in read.ref_starts[done:done + count])
            refs.copy(read, first, read.ref_starts[done + count], 0)
            done += count
    ref_starts.append(len(refs))
    ids = {rule.id for rule in rules}
    sections = old if head is None else _source(head, str(path), digest, head.problems)
    if read.problems:
        # the kept rules are clean; with no id defined twice, the whole read's problems are the new items'
        if len(ids) != len(rules) or not ids.isdisjoint(read.ids):
            return None  # an id defined twice: the whole read names both places
        return replace(
            sections, digest=digest, problems=read.problems, rules=(), rule_lines=array("I"),
            rule_ids=frozenset(ids | read.ids), layout=None, **refs.packed(),
        )  # fmt: skip
    if len(ids) != n:
        return None  # an id defined twice: the whole read names both places
    return replace(
        sections,
        digest=digest,
        rules=tuple(rules),
        rule_lines=rule_lines,
        layout=Layout.of(items, ref_starts),
        **refs.packed(),
    )


def _between(kept: list[tuple[int, int, int]], n: int) -> list[tuple[int, int]]:
    """The runs of ``[0, n)`` that the kept runs (in order, not overlapping) leave."""
    out, at = [], 0
    for a, b, _ in kept:
        if a > at:
            out.append((at, a))
        at = b
    if n > at:
        out.append((at, n))
    return out


def _read_head(text: str, path: Path, geoip: bool) -> _Reader | None:
    """The file's other sections, read on their own: ``text`` is the file with its rules' lines blank."""
    plain, parsed = parse_plain(text, str(path), 1)
    if not plain or not isinstance(parsed, YamlMapping) or "rules" not in parsed or parsed["rules"] is not None:
        return None
    del parsed["rules"]
    reader = _Reader(Problems(), geoip=geoip)
    reader.read_file(parsed, path)
    return None if reader.problems.items or reader.rules else reader


@dataclass(frozen=True, slots=True)
class _Read:
    """An edit's new ``rules`` items, read on their own (:func:`_read_runs`): their rules and references."""

    rules: tuple[RuleSpec, ...]  # one an item; with problems, only those of the items that made one
    rule_lines: array[int]
    ref_starts: array[int]  # where each item's references start in the columns, then where the last one's end
    ref_kinds: bytes  # the references as a source's three columns
    ref_names: tuple[str, ...]
    ref_lines: array[int]
    problems: tuple[Problem, ...]  # in reading order
    ids: frozenset[str]  # the rule ids the items define (one defined twice among them is also a problem)


_NOTHING_READ = _Read((), array("I"), array("I", [0]), b"", (), array("I"), (), frozenset())  # only removed or moved


def _read_runs(text: str, first_line: int, lines: list[int], runs: list[tuple[int, int]], path: Path,
               geoip: bool) -> _Read | None:
    """Items ``[a, b)`` of the ``rules`` list for each run, read from their text (``Items.runs_text``)
    in one parse: the items must start at ``lines``, one after the other."""
    plain, parsed = parse_plain(text, str(path), first_line)
    if not plain or not isinstance(parsed, YamlSequence) or list(parsed.item_lines) != lines:
        return None
    if not all(isinstance(item, YamlMapping) for item in parsed):
        return None
    reader = _Reader(Problems(), geoip=geoip)
    reader.item_refs = array("I")
    items = parsed.items_with_where()
    for a, b in runs:
        reader.read_items(islice(items, b - a), path.stem, a)
    ids = frozenset(reader.defined["rule id"])
    if not reader.problems.items and len(reader.rules) != len(lines):
        return None  # (not seen: without problems every item makes a rule)
    refs = _Columns()
    refs.add(reader.refs)
    return _Read(tuple(reader.rules), reader.rule_lines, array("I", [*reader.item_refs, len(refs)]),
                 problems=tuple(reader.problems.items), ids=ids, **refs.packed())


def _read_runs_isolated(text: str, items: Items, runs: list[tuple[int, int]], path: Path, geoip: bool,
                        children: Sequence[_Child] = ()) -> _Read | None:
    """:func:`_read_runs` in child processes, side by side: ``children``, or one started now, each
    given an equal share of the runs; None when that fails."""
    if not children:
        return _with_a_child(lambda child: _read_runs_isolated(text, items, runs, path, geoip, [child]))
    try:
        parts = _read_shares(text, items, runs, path, geoip, children)
    except Exception:  # the children are an optimisation: any trouble, and the file is read another way
        parts = None
    if parts is None:
        for child in children:
            if child.used:  # one still reading its share is stopped now, not after the read that follows
                child.close()
        return None
    return _joined(parts)


def _read_shares(text: str, items: Items, runs: list[tuple[int, int]], path: Path, geoip: bool,
                 children: Sequence[_Child]) -> list[_Read] | None:
    """Each child's share of the runs, read by it: all sent first, so that they read side by side."""
    shares = [share for share in _shares(runs, len(children)) if share]
    sent = []
    for child, share in zip(children, shares, strict=False):
        share_text, first_line = items.runs_text(text, share)
        lines = [line for a, b in share for line in items.lines[a:b]]
        where = json.dumps([first_line, lines, share]).encode()
        if not child.send("_runs_child", [str(path), "1" if geoip else "0"], where + b"\n" + share_text.encode()):
            return None
        sent.append((child, len(lines)))
    parts = []
    for child, count in sent:
        loaded = child.receive()
        if loaded is None or not isinstance(loaded[0], _Read):
            return None
        read = replace(loaded[0], rules=loaded[1])
        if not read.problems and len(read.rules) != count:
            return None
        parts.append(read)
    return parts


def _shares(runs: list[tuple[int, int]], count: int) -> list[list[tuple[int, int]]]:
    """The runs cut into ``count`` shares of (nearly) as many items each, in order."""
    total = sum(b - a for a, b in runs)
    ends = [total * k // count for k in range(1, count)] + [total]  # where each share ends, counted in items
    out: list[list[tuple[int, int]]] = [[] for _ in range(count)]
    share = done = 0
    for a, b in runs:
        while a < b:
            while done >= ends[share]:
                share += 1
            end = min(b, a + ends[share] - done)
            out[share].append((a, end))
            done += end - a
            a = end
    return out


def _joined(parts: list[_Read]) -> _Read | None:
    """Reads of consecutive shares of the runs as one read of them all; None when an id is defined in two
    (one read would report it: the caller reads the file whole, which names both places)."""
    if len(parts) == 1:
        return parts[0]
    ids = frozenset().union(*(part.ids for part in parts))
    if len(ids) != sum(len(part.ids) for part in parts):
        return None
    refs = _Columns()
    ref_starts = array("I")
    for part in parts:
        ref_starts.extend(start + len(refs) for start in part.ref_starts[:-1])
        refs.copy(part, 0, part.ref_starts[-1], 0)
    ref_starts.append(len(refs))
    return _Read(
        rules=tuple(rule for part in parts for rule in part.rules),
        rule_lines=array("I", [line for part in parts for line in part.rule_lines]),
        ref_starts=ref_starts,
        problems=tuple(problem for part in parts for problem in part.problems),
        ids=ids,
        **refs.packed(),
    )


def _runs_child() -> None:
    """The child of :func:`_read_runs_isolated`: where the runs are as a JSON line, then their text, on stdin."""
    where, data = sys.stdin.buffer.read().split(b"\n", 1)
    first_line, lines, runs = json.loads(where)
    read = _read_runs(_decode(data), first_line, lines, [(a, b) for a, b in runs], Path(sys.argv[1]),
                      sys.argv[2] == "1")
    if read is None:
        os._exit(1)
    _dump_rules_after(replace(read, rules=()), read.rules, sys.stdout.buffer)
    sys.stdout.flush()
    os._exit(0)


def _moved(lines: array[int], shift: int) -> array[int]:
    """The lines, each ``shift`` further down the file."""
    return array("I", [line + shift for line in lines]) if shift else lines


class _Columns:
    """A source's references as its three columns, built up (see PolicySource)."""

    def __init__(self) -> None:
        self.kinds = bytearray()
        self.names: list[str] = []
        self.lines = array("I")  # 4 bytes a line

    def __len__(self) -> int:
        return len(self.names)

    def add(self, refs: Iterable[tuple[str, str, Where]]) -> None:
        for kind, name, where in refs:
            self.kinds.append(_REF_KINDS.index(kind))
            self.names.append(name)
            self.lines.append(where.line)

    def packed(self) -> dict[str, Any]:
        """The three columns as a source's (or a :class:`_Read`'s) fields."""
        return {"ref_kinds": bytes(self.kinds), "ref_names": tuple(self.names), "ref_lines": self.lines}

    def copy(self, source: PolicySource | _Read, start: int, end: int, shift: int) -> None:
        """``source``'s references ``[start, end)``, each ``shift`` lines further down."""
        self.kinds += source.ref_kinds[start:end]
        self.names += source.ref_names[start:end]
        self.lines += _moved(source.ref_lines[start:end], shift)


def _read_isolated(path: Path, data: bytes, *, geoip: bool, digest: bytes,
                   child: _Child | None = None) -> PolicySource | None:
    """:func:`read_source` in a child process (``child``, or one started now); None when that cannot be
    done (read here instead)."""
    source = _source_of(_in_child("_child", [str(path), "1" if geoip else "0"], data, child))
    return source if source is not None and source.digest == digest and source.path == str(path) else None


class _Child:
    """A child process for a big file's YAML, started before its work is known (see :func:`read_sources`).

    The interpreter's start and the imports (~0.15 s) then overlap what this process does
    meanwhile (reading the file and cutting it at its items). ``send`` hands it its work (the
    function of this module to run, its arguments, its input), ``receive`` waits for the
    result. One that is never given any is killed by ``close``.
    """

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parent.parent.parent)  # where the `gateway` package lives
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        # The pickle goes through a temporary file and is loaded from it as a stream: from a pipe it
        # would arrive as a list of chunks joined into one more copy, beside the values it makes.
        self.stuck: threading.Timer | None = None
        self.used = False
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 (it lives as long as the child: see close)
        try:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and code; the work goes in on stdin)
                [sys.executable, "-c", _CHILD_START],
                stdin=subprocess.PIPE, stdout=self.out, stderr=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        except BaseException:
            self.out.close()
            raise

    def send(self, entry: str, args: list[str], data: bytes) -> bool:
        """Hand the child its work: this module's function ``entry``, ``args``, ``data`` on stdin.
        False when it cannot take it (it has died). A child takes one piece of work."""
        self.used = True
        # a timer, not communicate(timeout=...): that polls the child with sleeps of up to 50 ms
        self.stuck = threading.Timer(CHILD_TIMEOUT, self.process.kill)
        self.stuck.start()
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps([entry, args]).encode() + b"\n" + data)
            self.process.stdin.close()
        except OSError:  # (BrokenPipeError)
            return False
        return True

    def receive(self) -> tuple[object, tuple[RuleSpec, ...]] | None:
        """What the function given to :meth:`send` wrote (:func:`_dump_rules_after`); None when the child failed."""
        try:
            self.process.wait()
        finally:
            if self.stuck is not None:
                self.stuck.cancel()
        if self.process.returncode != 0:
            return None
        self.out.seek(0)
        return _load_rules_after(self.out)

    def close(self) -> None:
        if self.stuck is not None:
            self.stuck.cancel()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.out.close()


# Niced first: the interpreter's start and the imports are most of a child's CPU on a small edit.
_CHILD_START = (f"import os; hasattr(os, 'nice') and os.nice({CHILD_NICENESS}); "
                "from gateway.policy.sources import _child_main; _child_main()")


def _spare_child() -> _Child | None:
    """A :class:`_Child`, or None when none can be started (the work is then done here)."""
    if not sys.executable:
        return None
    try:
        return _Child()
    except Exception:
        return None


def _with_a_child(use: Callable[[_Child], _T | None]) -> _T | None:
    """``use`` of a child started now, and closed after; None when none can be started."""
    child = _spare_child()
    if child is None:
        return None
    try:
        return use(child)
    finally:
        child.close()


def _in_child(entry: str, args: list[str], data: bytes,
              child: _Child | None = None) -> tuple[object, tuple[RuleSpec, ...]] | None:
    """What this module's function ``entry``, run in a child process (``child``, or one started
    now) with ``args`` and ``data`` on stdin, wrote; None when the child failed or cannot be run."""
    if child is None:
        return _with_a_child(lambda started: _in_child(entry, args, data, started))
    try:
        return child.receive() if child.send(entry, args, data) else None
    except Exception:  # the child is an optimisation: any trouble, and the file is read here
        return None


def _child_main() -> None:
    """A child process's start: the function to run and its arguments come as stdin's first line."""
    gc.disable()  # it only makes long-lived objects and then exits: collections would scan them for nothing
    entry, args = json.loads(sys.stdin.buffer.readline())
    sys.argv[1:] = args
    {"_child": _child, "_runs_child": _runs_child}[entry]()


def _child() -> None:
    """The child process: file bytes on stdin, path and geoip flag as arguments, a pickle out."""
    data = sys.stdin.buffer.read()
    source = read_source(Path(sys.argv[1]), data, geoip=sys.argv[2] == "1", cut=True)
    if source.problems:  # the load fails with them: its rules would only be unpickled there to be dropped
        source = replace(source, rules=(), rule_lines=array("I"), rule_ids=source.names("rule id"))
    _dump_chunked(source, sys.stdout.buffer)
    sys.stdout.flush()
    os._exit(0)  # the parent has what it needs: skip tearing down the heap


def _dump_chunked(source: PolicySource, out: BinaryIO) -> None:
    """The source without its rules, then its rules (see :func:`_dump_rules_after`)."""
    _dump_rules_after(replace(source, rules=()), source.rules, out)


def _dump_rules_after(head: object, rules: tuple[RuleSpec, ...], out: BinaryIO) -> None:
    """``head``, the rules' count and shared values, then the rules :data:`PICKLE_CHUNK` at a time.

    One pickle of everything would be loaded with one memo, which keeps every
    object the load made alive until its end, including the transient state
    list of each frozen dataclass: at 100,000 rules ~57 MiB more at the peak,
    scattered among the objects that stay, so most of it is never given back
    to the system (idle RSS ~30 MiB higher). Each chunk is its own pickle, so
    the transients of one chunk are freed before the next is read and their
    memory is reused. What many rules hold (names, the file name, reasons,
    equal network lists and expiries) goes once, ahead of the chunks, which
    refer to it (persistent ids): each chunk would otherwise bring its own
    copy, and each rule its own equal value (~5 MiB at 100,000 rules).
    """
    shared, by_id = _shared_values(rules)
    pickle.Pickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump((head, len(rules), tuple(shared)))
    dump = _SharingPickler(out, by_id)
    for start in range(0, len(rules), PICKLE_CHUNK):
        dump.clear_memo()
        dump.dump(rules[start:start + PICKLE_CHUNK])


def _shared_values(rules: Iterable[RuleSpec]) -> tuple[list[object], dict[int, int]]:
    """What rules share, by value, and the index of each object standing for one of them.

    Strings (action, function, channel, reason, file, users, groups,
    countries) always; network lists, entries, sets of users or groups and
    expiries when two rules hold equal ones (a range or an expiry date
    written many times comes back as one object).
    """
    values: list[object] = []
    index_of: dict[tuple[type, object], int] = {}
    by_id: dict[int, int] = {}

    def share(value: object) -> None:
        key = (type(value), value)
        index = index_of.get(key)
        if index is None:
            index = index_of[key] = len(values)
            values.append(value)
        by_id[id(value)] = index

    counts: dict[tuple[type, object], int] = {}
    for rule in rules:
        for value in (
            rule.action, rule.function, rule.channel, rule.reason, rule.file,
            *(rule.users or ()), *(rule.groups or ()), *(rule.countries or ()),
        ):  # fmt: skip
            if value is not None:
                share(value)
        for value in (rule.networks, *(rule.networks or ()), rule.users, rule.groups, rule.expires):
            if value is not None:
                key = (type(value), value)
                counts[key] = counts.get(key, 0) + 1
    for rule in rules:
        for value in (rule.networks, *(rule.networks or ()), rule.users, rule.groups, rule.expires):
            if value is not None and counts[(type(value), value)] > 1:
                share(value)
    return values, by_id


# The frozen dataclasses a big file's rules are made of, with their fields in order. Pickled as
# ``cls(*values)``: the default for a slotted dataclass (_dataclass_getstate/_dataclass_setstate)
# looks up fields() for every object, 2.5 s of the serving process's time at 100,000 rules.
_BY_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (RuleSpec, Where, NetEntry, Expiry)
}


class _SharingPickler(pickle.Pickler):
    """A pickler that refers to the shared values by their index (they are alive: ids are theirs)."""

    def __init__(self, out: BinaryIO, index: dict[int, int]) -> None:
        super().__init__(out, protocol=pickle.HIGHEST_PROTOCOL)
        self._index = index

    def persistent_id(self, obj: object) -> int | None:
        return self._index.get(id(obj))

    def reducer_override(self, obj: object) -> Any:  # typeshed's union has no NotImplemented
        names = _BY_FIELDS.get(type(obj))
        if names is None:
            return NotImplemented
        return type(obj), tuple(getattr(obj, name) for name in names)


class _SharingUnpickler(pickle.Unpickler):
    def __init__(self, stream: BinaryIO, shared: tuple[object, ...]) -> None:
        super().__init__(stream)
        self._shared = shared

    def persistent_load(self, pid: object) -> object:
        if not isinstance(pid, int):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return self._shared[pid]


def _source_of(loaded: tuple[object, tuple[RuleSpec, ...]] | None) -> PolicySource | None:
    """The source :func:`_dump_chunked` wrote, from what :func:`_load_rules_after` loaded (None if it is not that)."""
    if loaded is None or not isinstance(loaded[0], PolicySource):
        return None
    return replace(loaded[0], rules=loaded[1])


def _load_rules_after(stream: BinaryIO) -> tuple[object, tuple[RuleSpec, ...]] | None:
    """What :func:`_dump_rules_after` wrote: the head and the rules (None if it is not that)."""
    head = pickle.load(stream)  # noqa: S301 (written by our own child)
    if not (isinstance(head, tuple) and len(head) == 3 and isinstance(head[1], int)):
        return None
    count: int = head[1]
    shared: tuple[object, ...] = head[2]
    rules: list[RuleSpec] = []
    while len(rules) < count:
        chunk = _SharingUnpickler(stream, shared).load()  # a new memo for each chunk
        if not isinstance(chunk, tuple) or not chunk:
            return None
        rules += chunk
    if len(rules) != count:
        return None
    return head[0], tuple(rules)


def read_sources(
    files: Iterable[Path], *, geoip: bool, previous: Iterable[PolicySource] = (), isolate: bool = True
) -> list[PolicySource]:
    """Every policy file as a source, reusing ``previous`` ones whose file is unchanged.

    A file that cannot be read becomes a source holding that one problem.
    """
    previous = list(previous)
    known = {(s.path, s.digest, s.geoip): s for s in previous}
    edited = {(s.path, s.geoip): s for s in previous if s.layout is not None}
    out: list[PolicySource] = []
    for path in files:
        name = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            out.append(_failed(name, "file not found", geoip))
            continue
        except OSError as exc:
            out.append(_failed(name, f"cannot read: {exc}", geoip))
            continue
        digest = hashlib.sha256(data).digest()
        big = len(data) >= ISOLATE_BYTES
        source = known.get((name, digest, geoip))
        # A big file that changed is read in children if the edit is large, or in one if it cannot be
        # read as an edit (or was not read before): started now, their start-up overlaps the cut (and
        # is wasted on a small edit).
        count = (CHILDREN if (name, geoip) in edited else 1) if source is None and isolate and big else 0
        children = [child for _ in range(count) if (child := _spare_child())]
        try:
            if source is None and (name, geoip) in edited:
                source = read_edit(path, data, digest, edited[(name, geoip)], isolate=isolate, children=children)
            if source is None and isolate and big:
                unused = next((child for child in children if not child.used), None)  # (else one is started)
                source = _read_isolated(path, data, geoip=geoip, digest=digest, child=unused)
        finally:
            for child in children:
                child.close()
        if source is None:
            source = read_source(path, data, geoip=geoip, digest=digest, cut=big)
        out.append(source)
    return out


def _failed(name: str, message: str, geoip: bool) -> PolicySource:
    problems = Problems()
    problems.add(Where(name, 1), message)
    return _source(_Reader(problems, geoip=geoip), name, b"", problems)


def merge_sources(sources: list[PolicySource], problems: Problems) -> PolicySpec | None:
    """One spec from the files' sources, with the checks across files; None when a name is defined twice.

    Problems go to ``problems`` in the order one reader walking the files would
    record them: each file's own, then every unknown reference, then ``mobile``.
    """
    seen: dict[str, set[str]] = {kind: set() for kind in (*_NAME_KINDS, "rule id")}
    with_defaults = 0
    for source in sources:
        with_defaults += source.defaults is not None
        for kind, names in seen.items():
            own = source.names(kind)
            if not names.isdisjoint(own):
                return None
            names |= own
    if with_defaults > 1:
        return None
    for source in sources:
        problems.items.extend(source.problems)
    by_kind = {
        "function": seen["function"],
        "channel": {DEFAULT_CHANNEL, *seen["channel"]},
        "group": seen["group"],
        "user": seen["user"].union(*(source.group_members for source in sources)),
    }
    for source in sources:
        unknown = {
            (kind, name) for kind, names in by_kind.items() for name in source.ref_names_of(kind) if name not in names
        }
        if not unknown:
            continue
        for kind, name, where in source.refs():
            if (kind, name) in unknown:
                problems.add(where, unknown_reference(kind, name, by_kind[kind]))
    if MOBILE_CHANNEL not in seen["channel"]:
        for source in sources:
            for where in source.mobile_refs:
                problems.add(where, NO_MOBILE_CHANNEL)
    return PolicySpec(
        channels=tuple(c for s in sources for c in s.channels),
        functions=tuple(f for s in sources for f in s.functions),
        defaults=next((s.defaults for s in sources if s.defaults is not None), None),
        groups=tuple(g for s in sources for g in s.groups),
        users=tuple(u for s in sources for u in s.users),
        rules=tuple(r for s in sources for r in s.rules),
        rule_lines=array("I", b"".join(s.rule_lines.tobytes() for s in sources)),
    )
