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


def parse_yaml(text: str, file_name: str) -> Any:
    """Parse YAML text; syntax errors become a ConfigError naming file:line."""
    try:
        loader = _LineLoader(text)  # the reader may reject a control character already here
        loader.file_name = file_name
        return loader.get_single_data()
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
