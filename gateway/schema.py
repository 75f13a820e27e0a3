"""Typed reading of YAML sections: every wrong key or value becomes a Problem.

A :class:`Section` wraps one YAML mapping. Its getters return a value of the
asked type or, after recording ``file:line: message``, the default, so that a
single pass over a file reports every mistake in it.
"""

from __future__ import annotations

import builtins
import ipaddress
import re
from collections.abc import Collection
from typing import Any, TypeVar

from gateway.yamlsrc import Mapping, Problems, Sequence, Where

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_duration(value: Any) -> float:
    """``30s``, ``15m``, ``12h``, ``7d`` or a bare number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 15m, 12h or 7d, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"expected a duration like 30s, 15m, 12h or 7d, got {value!r}")


def parse_network(value: Any) -> IPNetwork:
    """An address or CIDR; IPv4-mapped IPv6 counts as IPv4."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR, got {value!r}")
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {value!r}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class Section:
    """One YAML mapping, read with type checks; unknown keys are problems."""

    def __init__(
        self,
        mapping: Any,
        problems: Problems,
        *,
        name: builtins.str,
        allowed: Collection[builtins.str],
        where: Where,
    ) -> None:
        self.problems = problems
        self.name = name
        self.where_ = where
        if mapping is None:
            mapping = {}
        if not isinstance(mapping, dict):
            problems.add(where, f"{name}: expected a mapping, got {_kind(mapping)}")
            mapping = {}
        self.data: dict[builtins.str, Any] = mapping
        for key in mapping:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                problems.add(self.where(key), f"{name or 'top level'}: unknown key {key!r} (expected one of: {hint})")

    def where(self, key: builtins.str | None = None) -> Where:
        if isinstance(self.data, Mapping):
            return self.data.where(key)
        return self.where_

    def _label(self, key: builtins.str) -> builtins.str:
        return f"{self.name}.{key}" if self.name else key

    def has(self, key: builtins.str) -> bool:
        return key in self.data and self.data[key] is not None

    def raw(self, key: builtins.str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def _typed(self, key: builtins.str, default: T, types: tuple[type, ...], label: builtins.str) -> T:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) and bool not in types:
            self.problems.add(self.where(key), f"{self._label(key)}: expected {label}, got {value!r}")
            return default
        if not isinstance(value, types):
            self.problems.add(self.where(key), f"{self._label(key)}: expected {label}, got {_kind(value)}")
            return default
        return value  # type: ignore[return-value]

    def str(self, key: builtins.str, default: T) -> builtins.str | T:
        return self._typed(key, default, (str,), "a string")

    def bool(self, key: builtins.str, default: bool) -> bool:
        return self._typed(key, default, (bool,), "true or false")

    def int(self, key: builtins.str, default: int, *, minimum: int | None = None) -> int:
        value = self._typed(key, default, (int,), "an integer")
        if minimum is not None and value < minimum:
            self.problems.add(self.where(key), f"{self._label(key)}: must be at least {minimum}")
            return default
        return value

    def number(self, key: builtins.str, default: float, *, minimum: float = 0.0) -> float:
        value = self._typed(key, default, (int, float), "a number")
        if value < minimum:
            self.problems.add(self.where(key), f"{self._label(key)}: must be at least {minimum}")
            return default
        return float(value)

    def choice(self, key: builtins.str, default: builtins.str, choices: Collection[builtins.str]) -> builtins.str:
        value = self.str(key, default)
        if value not in choices:
            self.problems.add(
                self.where(key), f"{self._label(key)}: expected one of {', '.join(choices)}, got {value!r}"
            )
            return default
        return value

    def duration(self, key: builtins.str, default: float) -> float:
        value = self.data.get(key)
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.problems.add(self.where(key), f"{self._label(key)}: {exc}")
            return default

    def list(self, key: builtins.str) -> list[tuple[Any, Where]]:
        """Items of a list with the line of each; a lone scalar counts as a list of one."""
        value = self.data.get(key)
        if value is None:
            return []
        if isinstance(value, Sequence):
            return list(value.items_with_where())
        if isinstance(value, list):
            return [(item, self.where(key)) for item in value]
        if isinstance(value, dict):
            self.problems.add(self.where(key), f"{self._label(key)}: expected a list, got a mapping")
            return []
        return [(value, self.where(key))]

    def str_list(self, key: builtins.str, default: tuple[builtins.str, ...] = ()) -> tuple[builtins.str, ...]:
        if key not in self.data or self.data[key] is None:
            return default
        out: list[builtins.str] = []
        for item, where in self.list(key):
            if isinstance(item, builtins.str | int) and not isinstance(item, bool):
                out.append(str(item))
            else:
                self.problems.add(where, f"{self._label(key)}: expected a string, got {_kind(item)}")
        return tuple(out)

    def networks(self, key: builtins.str, default: tuple[IPNetwork, ...] = ()) -> tuple[IPNetwork, ...]:
        if key not in self.data or self.data[key] is None:
            return default
        out: list[IPNetwork] = []
        for item, where in self.list(key):
            try:
                out.append(parse_network(item))
            except ValueError as exc:
                self.problems.add(where, f"{self._label(key)}: {exc}")
        return tuple(out)

    def section(self, key: builtins.str, *, allowed: Collection[builtins.str]) -> Section:
        return Section(
            self.data.get(key),
            self.problems,
            name=f"{self._label(key)}" if self.name else key,
            allowed=allowed,
            where=self.where(key),
        )


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"a string ({value!r})"
    return type(value).__name__
