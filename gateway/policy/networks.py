"""Network entries of rules: addresses, CIDRs and ranges, and the prefix index.

Every entry becomes one or more CIDR blocks. A range ``a-b`` is split into the
smallest set of CIDR blocks that covers it exactly; the block that contains the
client's address is what matched, so its prefix length is the entry's
specificity for that address (DESIGN.md §3.3 point 4). A range that is one
CIDR block therefore ranks exactly like that CIDR, and an address near the edge
of a ragged range ranks like the small block it falls in.

Specificity is counted in IPv6 terms: an IPv4 /p is /96+p, a single IPv4
address /128, like a single IPv6 address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from gateway.policy.model import IPAddress
from gateway.schema import IPNetwork, parse_network

T = TypeVar("T")


Cidr = tuple[int, int, int, int]  # (version, prefix length in v6 terms, mask, network as int)

_V4_FULL = (1 << 32) - 1
_V6_FULL = (1 << 128) - 1
# masks by (version, v6-terms prefix): shared, so 100,000 entries do not hold 100,000 equal ints
_MASKS: dict[tuple[int, int], int] = {
    **{(4, 96 + p): _V4_FULL ^ ((1 << (32 - p)) - 1) for p in range(33)},
    **{(6, p): _V6_FULL ^ ((1 << (128 - p)) - 1) for p in range(129)},
}


@dataclass(frozen=True, slots=True)
class NetEntry:
    """One item of a ``networks`` list, as written and as CIDR blocks.

    The blocks are kept flat: the first as ``code`` and ``network``, any others
    in ``more`` as ``(code, network, code, network, ...)``, where code is
    :func:`_code` of the version and prefix (always one of Python's shared
    small ints) and network the block's first address as an int, the same
    object the index keys on: a large policy holds hundreds of thousands of
    blocks, and :mod:`ipaddress` objects or tuples per block cost several times
    the memory. ``written`` is the text as written, or None when it is the
    plain spelling of its one IPv4 block (``a.b.c.d`` or ``a.b.c.d/p`` with
    ``p < 32``), which :attr:`text` rebuilds: a 100,000-rule ban list then
    keeps no string and no tuple per address. :attr:`cidrs` unpacks the blocks
    for the index; :attr:`blocks` rebuilds :mod:`ipaddress` networks for
    ``explain`` and ``check``.
    """

    written: str | None
    code: int
    network: int
    more: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        if self.written is not None:
            return self.written
        number, prefix = self.network, self.code - 129
        dotted = f"{number >> 24}.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
        return dotted if prefix == 32 else f"{dotted}/{prefix}"

    @property
    def flat(self) -> tuple[int, ...]:
        return (self.code, self.network, *self.more)

    @property
    def cidrs(self) -> tuple[Cidr, ...]:
        more = self.more
        first = _cidr(self.code, self.network)
        if not more:
            return (first,)
        return (first, *(_cidr(more[i], more[i + 1]) for i in range(0, len(more), 2)))

    @property
    def blocks(self) -> tuple[IPNetwork, ...]:
        return tuple(
            ipaddress.IPv4Network((network, prefix - 96)) if version == 4 else ipaddress.IPv6Network((network, prefix))
            for version, prefix, _, network in self.cidrs
        )

    @classmethod
    def of_blocks(cls, text: str, blocks: tuple[IPNetwork, ...]) -> NetEntry:
        flat: list[int] = []
        for block in blocks:
            flat += (_code(block.version, v6_prefix(block)), int(block.network_address))
        return cls(text, flat[0], flat[1], tuple(flat[2:]))


def _code(version: int, prefix: int) -> int:
    """Version and v6-terms prefix in one small int: IPv6 0..128, IPv4 (prefix 96..128) 129..161."""
    return prefix if version == 6 else prefix + 33


def _cidr(code: int, network: int) -> Cidr:
    version, prefix = (6, code) if code <= 128 else (4, code - 33)
    return (version, prefix, _MASKS[(version, prefix)], network)


def v6_prefix(network: IPNetwork) -> int:
    """The prefix length in IPv6 terms (IPv4 /p counts as /96+p)."""
    return network.prefixlen + 96 if network.version == 4 else network.prefixlen


def _address(text: str) -> IPAddress:
    address = ipaddress.ip_address(text.strip())
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def judged_address(address: IPAddress) -> IPAddress:
    """The address rules are matched against: an IPv4-mapped IPv6 address counts as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _v4_number(text: str) -> int | None:
    """A dotted-quad IPv4 address as an int, for the plain spellings only (else None).

    The common case of big ban lists, about 10x faster than :mod:`ipaddress`;
    anything unusual (leading zeros, spaces, other forms) returns None and is
    left to :mod:`ipaddress`, which accepts or rejects it as before.
    """
    parts = text.split(".")
    if len(parts) != 4:
        return None
    number = 0
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()) or (part[0] == "0" and len(part) > 1):
            return None
        octet = int(part)
        if octet > 255:
            return None
        number = number << 8 | octet
    return number


def _fast_entry(text: str) -> NetEntry | None:
    """``a.b.c.d`` or ``a.b.c.d/p`` without :mod:`ipaddress`; None for anything else."""
    address, slash, prefix_text = text.partition("/")
    number = _v4_number(address)
    if number is None:
        return None
    prefix = 32
    if slash:
        if not (0 < len(prefix_text) <= 2 and prefix_text.isascii() and prefix_text.isdigit()):
            return None
        if prefix_text[0] == "0" and len(prefix_text) > 1:
            return None
        prefix = int(prefix_text)
        if prefix > 32:
            return None
    network = number & _MASKS[(4, 96 + prefix)]
    # the plain spelling of the block is rebuilt by NetEntry.text (a trailing /32 is kept as written)
    plain = network == number and (not slash or prefix < 32)
    return NetEntry(None if plain else text, _code(4, 96 + prefix), network)


def parse_entry(value: object) -> NetEntry:
    """An address, CIDR or ``a-b`` range; raises ValueError with an admin-facing message."""
    if not isinstance(value, str):
        raise ValueError(f"expected an address, CIDR or range a-b, got {value!r}")
    text = value.strip()
    fast = _fast_entry(text)
    if fast is not None:
        return fast
    if "-" in text and "/" not in text:
        first_text, _, last_text = text.partition("-")
        try:
            first, last = _address(first_text), _address(last_text)
        except ValueError:
            raise ValueError(f"not an address range a-b: {value!r}") from None
        blocks: tuple[IPNetwork, ...]
        # two branches, not one `or`: each narrows both ends to one version for the type checker
        if isinstance(first, ipaddress.IPv4Address) and isinstance(last, ipaddress.IPv4Address):  # noqa: SIM114
            blocks = tuple(ipaddress.summarize_address_range(first, last)) if first <= last else ()
        elif isinstance(first, ipaddress.IPv6Address) and isinstance(last, ipaddress.IPv6Address):
            blocks = tuple(ipaddress.summarize_address_range(first, last)) if first <= last else ()
        else:
            raise ValueError(f"a range must not mix IPv4 and IPv6: {value!r}")
        if not blocks:
            raise ValueError(f"range end is before its start: {value!r}")
        return NetEntry.of_blocks(text, blocks)
    return NetEntry.of_blocks(text, (parse_network(text),))


def entry_contains(entry: NetEntry, address: IPAddress) -> IPNetwork | None:
    """The block of ``entry`` holding ``address`` (the slow, obvious way: for explain)."""
    for block in entry.blocks:
        if block.version == address.version and address in block:
            return block
    return None


class PrefixTable(Generic[T]):
    """CIDR blocks -> payloads, searched by masking the address once per prefix length present.

    A lookup costs one dict probe per distinct prefix length in the table (at most
    33 for IPv4, 129 for IPv6; a handful in practice), whatever the number of
    blocks. Lengths are walked longest first, so the first hit is the most specific.

    A block with one payload holds it bare, several as a tuple (so a payload must
    never itself be a tuple): most blocks of a big policy have one rule, and a
    1-tuple each would be ~5 MiB at 100,000 rules. The dicts built by :meth:`add`
    are the ones lookups use (sealing sorts in place; nothing is copied), and an
    unused version is the shared empty tuple.
    """

    __slots__ = ("_building", "v4", "v6")

    def __init__(self) -> None:
        # per version: ((prefix length in v6 terms, mask, {network int: payload or (payload, ...)}), ...),
        # longest first
        self.v4: tuple[tuple[int, int, dict[int, T | tuple[T, ...]]], ...] = ()
        self.v6: tuple[tuple[int, int, dict[int, T | tuple[T, ...]]], ...] = ()
        self._building: dict[tuple[int, int], tuple[int, dict[int, T | tuple[T, ...]]]] | None = None

    def add(self, cidr: Cidr, payload: T) -> None:
        """Add a payload under one of :attr:`NetEntry.cidrs`; call :meth:`seal` when done."""
        assert not isinstance(payload, tuple), "a payload is never a tuple (see the class docstring)"
        version, prefix, mask, network = cidr
        if self._building is None:
            self._building = {}
        level = self._building.get((version, prefix))
        if level is None:
            level = self._building[(version, prefix)] = (mask, {})
        table = level[1]
        old = table.get(network)
        table[network] = payload if old is None else (*old, payload) if isinstance(old, tuple) else (old, payload)

    def seal(self, order: Callable[[T], Any] | None = None) -> None:
        """Freeze the levels added so far into the longest-first lists lookups walk.

        Each block with several payloads has them sorted by ``order`` descending when given.
        """
        if self._building is None:
            return
        levels = sorted(self._building.items(), key=lambda item: -item[0][1])
        for _, (_, table) in levels:
            if order is not None:
                for network, hits in table.items():
                    if isinstance(hits, tuple):
                        table[network] = tuple(sorted(hits, key=order, reverse=True))
        self.v4 = tuple((prefix, mask, table) for (version, prefix), (mask, table) in levels if version == 4)
        self.v6 = tuple((prefix, mask, table) for (version, prefix), (mask, table) in levels if version == 6)
        self._building = None

    def edited(
        self, drop: Iterable[tuple[Cidr, T]], put: Iterable[tuple[Cidr, T]], order: Callable[[T], Any]
    ) -> PrefixTable[T]:
        """A sealed table without ``drop``'s payloads (by identity) and with ``put``'s; this one is not changed.

        Only the levels touched are copied; a block's payloads are sorted by
        ``order`` descending, as :meth:`seal` leaves them.
        """
        levels = {(4, prefix): (mask, table) for prefix, mask, table in self.v4}
        levels.update({(6, prefix): (mask, table) for prefix, mask, table in self.v6})
        copied: set[tuple[int, int]] = set()

        def level(version: int, prefix: int, mask: int) -> dict[int, T | tuple[T, ...]]:
            key = (version, prefix)
            if key not in copied:
                copied.add(key)
                old = levels.get(key)
                levels[key] = (mask, dict(old[1]) if old is not None else {})
            return levels[key][1]

        for (version, prefix, mask, network), payload in drop:
            table = level(version, prefix, mask)
            hits = table.get(network)
            if hits is payload:
                del table[network]
            elif isinstance(hits, tuple):
                rest = tuple(hit for hit in hits if hit is not payload)
                if rest:
                    table[network] = rest if len(rest) > 1 else rest[0]
                else:
                    del table[network]
        for (version, prefix, mask, network), payload in put:
            table = level(version, prefix, mask)
            hits = table.get(network)
            if hits is None:
                table[network] = payload
            else:
                both = (*hits, payload) if isinstance(hits, tuple) else (hits, payload)
                table[network] = tuple(sorted(both, key=order, reverse=True))
        out: PrefixTable[T] = PrefixTable()
        kept = sorted(((key, level) for key, level in levels.items() if level[1]), key=lambda item: -item[0][1])
        out.v4 = tuple((prefix, mask, table) for (version, prefix), (mask, table) in kept if version == 4)
        out.v6 = tuple((prefix, mask, table) for (version, prefix), (mask, table) in kept if version == 6)
        return out

    def merged(self, other: PrefixTable[T]) -> PrefixTable[T]:
        """A sealed table with the blocks of both, sharing their dicts (neither is changed).

        A prefix length both have is walked twice (two dicts of that length, one
        after the other): a lookup then probes both, and no dict is copied.
        """
        out: PrefixTable[T] = PrefixTable()
        out.v4 = tuple(sorted((*self.v4, *other.v4), key=_longest_first))
        out.v6 = tuple(sorted((*self.v6, *other.v6), key=_longest_first))
        return out

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)


def _longest_first(level: tuple[int, int, object]) -> int:
    return -level[0]
