"""YAML that remembers where every value came from.

Config errors must name ``file:line``. PyYAML's composer knows the line of every
node; this loader keeps it: mappings load as :class:`Mapping` (a dict that knows
the line of itself and of each key), sequences as :class:`Sequence` (a list that
knows the line of each item). Scalars stay plain Python values; their line is
asked of the container that holds them. Duplicate keys, which PyYAML silently
merges, are an error here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a config file: what every error names."""

    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    where: Where
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ConfigError(Exception):
    """One or more problems found while loading config; str() lists them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass
class Problems:
    """Collects problems so that one ``check`` run reports all of them."""

    items: list[Problem] = field(default_factory=list)

    def add(self, where: Where, message: str) -> None:
        self.items.append(Problem(where, message))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(list(self.items))

    def __bool__(self) -> bool:
        return bool(self.items)


class Mapping(dict[str, Any]):
    """A YAML mapping with the line of itself and of each key."""

    file: str
    line: int
    key_lines: dict[str, int]

    def where(self, key: str | None = None) -> Where:
        if key is not None and key in self.key_lines:
            return Where(self.file, self.key_lines[key])
        return Where(self.file, self.line)


class Sequence(list[Any]):
    """A YAML sequence with the line of itself and of each item."""

    file: str
    line: int
    item_lines: list[int]

    def where(self, index: int | None = None) -> Where:
        if index is not None and 0 <= index < len(self.item_lines):
            return Where(self.file, self.item_lines[index])
        return Where(self.file, self.line)

    def items_with_where(self) -> Iterator[tuple[Any, Where]]:
        for index, item in enumerate(self):
            yield item, self.where(index)


# libyaml's parser (CSafeLoader) reads large rule files about 10x faster than the pure-Python
# one; the constructors below, which keep the lines, are the same for both.
_Base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_Base):  # type: ignore[misc]
    file_name = "<string>"

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError, AttributeError) as exc:
            # PyYAML resolves '0x:1F' as an int and then int() fails, or meets '!!timestamp junk':
            # either way, a bad value at this node.
            shown = repr(node.value)[:60] if isinstance(node, yaml.ScalarNode) else "here"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read value {shown}: {exc}", node.start_mark
            ) from None

    def construct_yaml_map(self, node: yaml.MappingNode) -> Iterator[Mapping]:
        mapping = Mapping()
        mapping.file = self.file_name
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        yield mapping
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                key = str(key)
            if key in mapping.key_lines:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {mapping.key_lines[key]})",
                    key_node.start_mark,
                )
            mapping.key_lines[key] = key_node.start_mark.line + 1
            mapping[key] = self.construct_object(value_node, deep=True)

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Iterator[Sequence]:
        sequence = Sequence()
        sequence.file = self.file_name
        sequence.line = node.start_mark.line + 1
        sequence.item_lines = [item.start_mark.line + 1 for item in node.value]
        yield sequence
        sequence.extend(self.construct_object(item, deep=True) for item in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_yaml_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_yaml_seq)


class _Unusual(Exception):
    """The fast reader met something it leaves to the full loader (see :func:`_read_events`)."""


_CParser: Any = getattr(getattr(yaml, "_yaml", None), "CParser", None)
_IMPLICIT: dict[str | None, list[tuple[str, Any]]] = yaml.resolver.Resolver.yaml_implicit_resolvers
_STR_TAG = "tag:yaml.org,2002:str"
_SCALARS = yaml.constructor.SafeConstructor.yaml_constructors
_PLAIN_TAGS = frozenset(
    "tag:yaml.org,2002:" + name for name in ("null", "bool", "int", "float", "timestamp")
)  # implicit tags the fast reader constructs itself, with PyYAML's own constructors


def _read_events(text: str, file_name: str, first_line: int = 1) -> Any:
    """The same values as :class:`_LineLoader`, built straight from libyaml's events.

    PyYAML's loader composes a node tree, resolves every scalar's tag and then
    constructs values from the nodes, all in Python: about 7x slower, and
    several times the memory of the values, for a 100,000-rule file. This reader
    keeps no nodes. It handles what config files are made of (mappings,
    sequences, plain and quoted scalars resolved by PyYAML's own implicit
    resolvers and constructed by its safe constructors) and raises
    :class:`_Unusual` for anything else (tags, anchors, aliases, merge keys,
    non-string keys, duplicate keys, several documents, any error), which the
    caller then reads with the full loader, so errors and rare features behave
    exactly as they always did. Equal strings are shared, which keeps
    repeated keys and values from being stored once per occurrence.
    """
    parser = _CParser(text)
    events = yaml.events
    scalar_event = events.ScalarEvent
    mapping_start, sequence_start = events.MappingStartEvent, events.SequenceStartEvent
    mapping_end, sequence_end = events.MappingEndEvent, events.SequenceEndEvent
    get = parser.get_event
    strings: dict[str, str] = {}
    constructor = yaml.constructor.SafeConstructor()
    try:
        if type(get()) is not events.StreamStartEvent:
            raise _Unusual
        event = get()
        if type(event) is events.StreamEndEvent:
            return None
        if type(event) is not events.DocumentStartEvent:
            raise _Unusual
        # the open containers: (container, its line table, the key awaiting its value or None)
        stack: list[list[Any]] = []
        root: Any = None
        while True:
            event = get()
            cls = type(event)
            if cls is scalar_event:
                if event.anchor is not None or (event.tag is not None and event.tag != "!"):
                    raise _Unusual
                value: Any = event.value
                tag = _STR_TAG
                if event.implicit[0]:
                    for candidate, regexp in _IMPLICIT.get(value[:1] if value else "", ()):
                        if regexp.match(value):
                            tag = candidate
                            break
                if tag == _STR_TAG:
                    value = strings.setdefault(value, value)
                elif tag in _PLAIN_TAGS:
                    value = _SCALARS[tag](constructor, yaml.ScalarNode(tag, value))
                else:
                    raise _Unusual
                container = None
            elif cls is mapping_start or cls is sequence_start:
                if event.anchor is not None or (event.tag is not None and event.tag != "!"):
                    raise _Unusual
                value = Mapping() if cls is mapping_start else Sequence()
                value.file = file_name
                value.line = event.start_mark.line + first_line
                container = value
            elif cls is mapping_end or cls is sequence_end:
                stack.pop()
                if not stack:
                    break
                continue
            else:  # an alias, or anything unexpected
                raise _Unusual
            line = event.start_mark.line + first_line
            if not stack:
                root = value
                if container is None:
                    break
            else:
                frame = stack[-1]
                parent = frame[0]
                if type(parent) is Sequence:
                    parent.append(value)
                    parent.item_lines.append(line)
                elif frame[2] is None:  # a key
                    if container is not None or type(value) is not str or value in parent.key_lines:
                        raise _Unusual
                    parent.key_lines[value] = line
                    frame[2] = value
                else:
                    parent[frame[2]] = value
                    frame[2] = None
            if container is not None:
                if type(container) is Mapping:
                    container.key_lines = {}
                else:
                    container.item_lines = []
                stack.append([container, None, None])
        if type(get()) is not events.DocumentEndEvent or type(get()) is not events.StreamEndEvent:
            raise _Unusual
        return root
    except _Unusual:
        raise
    except Exception:  # a syntax or value error: the full loader reports it properly
        raise _Unusual from None
    finally:
        parser.dispose()


def parse_plain(text: str, file_name: str, first_line: int) -> tuple[bool, Any]:
    """``(True, value)`` for plain YAML (see :func:`_read_events`) whose first line is line ``first_line``.

    ``(False, None)`` for anything else (anchors, aliases, tags, any error):
    the caller reads the whole file instead, with :func:`parse_yaml`.
    """
    if _CParser is None:
        return False, None
    try:
        return True, _read_events(text, file_name, first_line)
    except _Unusual:
        return False, None


def parse_yaml(text: str, file_name: str) -> Any:
    """Parse YAML text; syntax errors become a ConfigError naming file:line."""
    return parse_yaml_noting_plain(text, file_name)[0]


def parse_yaml_noting_plain(text: str, file_name: str) -> tuple[Any, bool]:
    """:func:`parse_yaml`, and whether the text was plain YAML (see :func:`parse_plain`)."""
    if _CParser is not None:
        try:
            return _read_events(text, file_name), True
        except _Unusual:
            pass
    try:
        loader = _LineLoader(text)  # the reader may reject a control character already here
        loader.file_name = file_name
        return loader.get_single_data(), False
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        message = f"character #x{char:04x} is not allowed: {exc.reason}"
        raise ConfigError([Problem(Where(file_name, line), message)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        message = " ".join(" ".join(part.split()) for part in (exc.context, exc.problem) if part)
        raise ConfigError([Problem(Where(file_name, line), message or "invalid YAML")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(Where(file_name, 1), " ".join(str(exc).split()))]) from None


def load_yaml(path: Path, display_name: str | None = None) -> Any:
    """Read and parse a YAML file; a missing or unreadable file is a ConfigError."""
    name = display_name or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(Where(name, 1), "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([Problem(Where(name, 1), f"cannot read: {exc}")]) from None
    return parse_yaml(text, name)
