"""Who the client is: the socket peer, or what trusted proxies say it is (DESIGN.md §3.1).

The semantics are nginx's ``real_ip_recursive on``: the peer is believed first;
only when the peer is a trusted proxy is its forwarding header read, right to
left, skipping addresses that are themselves trusted proxies. Everything left
of the answer was written by the client (or by proxies the client chose), so it
is never even parsed: a garbage entry there cannot cause an error, and a
garbage entry *reached* by the walk fails closed (the caller answers 400).

This module is pure (no aiohttp): the filter that reads the request wraps it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

from gateway.schema import IPAddress, IPNetwork

__all__ = [
    "HEADERS", "BadClientAddress", "ClientIPResolver", "IPAddress", "address_text", "parse_address", "parse_peer",
]

HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")
"""The forwarding headers the resolver can read (``client_ip.header`` in the main file)."""

_MAX_ECHO = 100
# RFC 7239 node-port: a decimal port or an obfuscated one ("_abc"); either way it is dropped.
_PORT = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")
# RFC 6874 zone id: unreserved characters and percent-escapes.
_ZONE = re.compile(r"[A-Za-z0-9._~%-]+")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


class BadClientAddress(ValueError):
    """An address the gateway must rely on could not be read: the request is malformed (400).

    The message names the entry but never echoes more than 100 characters of
    client-controlled text, so logs cannot be flooded through it.
    """


def _echo(text: str) -> str:
    shown = repr(text)
    if len(shown) > _MAX_ECHO:
        shown = shown[: _MAX_ECHO - 3] + "..."
    return shown


def _normalise(address: IPAddress) -> IPAddress:
    """IPv4-mapped IPv6 becomes IPv4, and a zone id is dropped, so equal hosts compare equal."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _strip_zone(host: str) -> str | None:
    """``fe80::1%eth0`` -> ``fe80::1``; None when the zone id is empty or malformed."""
    host, percent, zone = host.partition("%")
    if percent and not _ZONE.fullmatch(zone):
        return None
    return host


def parse_address(text: str) -> IPAddress:
    """One address as found in a header entry or as a socket peer.

    Accepts ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``[2001:db8::1]:4711``, zone ids (``fe80::1%eth0``), surrounding whitespace
    and double quotes. IPv4-mapped IPv6 is returned as IPv4. Anything else,
    including RFC 7239's ``unknown`` and obfuscated ``_hidden`` identifiers,
    raises :class:`BadClientAddress`: an identifier that is not an address
    cannot be matched against networks, so it cannot be trusted or allowed.
    """
    host = text.strip()
    if len(host) >= 2 and host[0] == '"' and host[-1] == '"':
        host = host[1:-1].strip()
    if not host.isascii():
        raise BadClientAddress(f"not an IP address: {_echo(text)}")
    if host.startswith("["):
        inner, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and _valid_port(rest[1:]))):
            raise BadClientAddress(f"not an IP address: {_echo(text)}")
        candidate = _strip_zone(inner)
        if candidate is None or ":" not in candidate:  # brackets are for IPv6 only
            raise BadClientAddress(f"not an IP address: {_echo(text)}")
    else:
        colons = host.count(":")
        if colons == 1:  # IPv4 with a port; bare IPv6 has at least two colons
            candidate, _, port = host.partition(":")
            if not _valid_port(port):
                raise BadClientAddress(f"not an IP address: {_echo(text)}")
        elif colons >= 2:
            stripped = _strip_zone(host)
            if stripped is None:
                raise BadClientAddress(f"not an IP address: {_echo(text)}")
            candidate = stripped
        else:
            candidate = host
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        raise BadClientAddress(f"not an IP address: {_echo(text)}") from None
    return _normalise(address)


@functools.lru_cache(maxsize=4096)
def parse_peer(text: str) -> IPAddress:
    """parse_address for the socket peer of every request: the same few proxies and clients recur."""
    return parse_address(text)


@functools.lru_cache(maxsize=4096)
def address_text(address: IPAddress) -> str:
    """str(address), computed once per address rather than per request and header."""
    return str(address)


def _valid_port(port: str) -> bool:
    if not _PORT.fullmatch(port):
        return False
    return port[0] == "_" or int(port) <= 65535


class _NetworkSet:
    """Membership in a list of CIDRs in O(distinct prefix lengths), not O(networks).

    Each network is stored as its integer network address under its prefix
    mask; an address is masked once per distinct prefix length and looked up in
    a set. Typical lists (1-5 entries) and large ones (a cloud provider's
    ranges) cost the same few operations per hop.
    """

    __slots__ = ("_v4", "_v6")

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        tables: dict[int, dict[int, set[int]]] = {4: {}, 6: {}}
        for network in networks:
            network = _normalise_network(network)
            tables[network.version].setdefault(int(network.netmask), set()).add(
                int(network.network_address)
            )
        self._v4 = tuple((mask, frozenset(nets)) for mask, nets in sorted(tables[4].items()))
        self._v6 = tuple((mask, frozenset(nets)) for mask, nets in sorted(tables[6].items()))

    def __contains__(self, address: IPAddress) -> bool:
        table = self._v4 if address.version == 4 else self._v6
        value = int(address)
        return any((value & mask) in nets for mask, nets in table)


def _normalise_network(network: IPNetwork) -> IPNetwork:
    """``::ffff:10.0.0.0/104`` is ``10.0.0.0/8``: addresses are compared as IPv4 too."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _split_list(line: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double-quoted strings (RFC 9110 quoted-string, with ``\\`` escapes).

    An unterminated quote swallows the rest of the line into one part, which
    then fails to parse if the walk reaches it: malformed means fail closed.
    """
    if '"' not in line:
        return line.split(separator)
    parts: list[str] = []
    start = 0
    quoted = False
    escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif quoted:
            if char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == separator:
            parts.append(line[start:index])
            start = index + 1
    parts.append(line[start:])
    return parts


def _forwarded_for(element: str, position: int) -> str:
    """The ``for=`` value of one RFC 7239 element, unquoted; BadClientAddress if there is none."""
    found: str | None = None
    for pair in _split_list(element, ";"):
        pair = pair.strip()
        if not pair:
            continue
        name, equals, value = pair.partition("=")
        if not equals:
            raise BadClientAddress(
                f"forwarded element {position} from the right is malformed: {_echo(element.strip())}"
            )
        if name.strip().lower() != "for":
            continue
        if found is not None:
            raise BadClientAddress(
                f"forwarded element {position} from the right has for= twice: {_echo(element.strip())}"
            )
        value = value.strip()
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"') or (value.endswith('\\"') and _odd_escape(value)):
                raise BadClientAddress(
                    f"forwarded element {position} from the right has a broken quoted string: "
                    f"{_echo(element.strip())}"
                )
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        elif '"' in value:
            raise BadClientAddress(
                f"forwarded element {position} from the right is malformed: {_echo(element.strip())}"
            )
        found = value
    if found is None:
        raise BadClientAddress(
            f"forwarded element {position} from the right has no for= parameter: {_echo(element.strip())}"
        )
    return found


def _odd_escape(quoted: str) -> bool:
    """True when the closing quote of ``quoted`` is itself escaped (an odd run of backslashes)."""
    run = len(quoted) - 1 - len(quoted[:-1].rstrip("\\"))
    return run % 2 == 1


class ClientIPResolver:
    """Resolves the client address of a request from its peer and forwarding header.

    Construction validates and precomputes (the trusted-proxy table, the
    header's parser) so that :meth:`resolve` does only per-request work.

    ``x-real-ip`` carries one address; when a request has several lines or a
    comma list the rightmost entry is taken, because that is the one the
    nearest trusted proxy wrote (earlier copies may come from the client).
    Empty list elements (``a,,b``, a trailing comma, an empty line) are skipped,
    as RFC 9110 §5.6.1 asks of list recipients and as nginx does.
    """

    __slots__ = ("_trusted", "header", "trusted_proxies")

    header: str
    trusted_proxies: tuple[IPNetwork, ...]

    def __init__(self, *, trusted_proxies: Sequence[IPNetwork], header: str) -> None:
        name = header.strip().lower()
        if name not in HEADERS:
            raise ValueError(f"client_ip.header: expected one of {', '.join(HEADERS)}, got {header!r}")
        networks = tuple(trusted_proxies)
        for network in networks:
            if not isinstance(network, ipaddress.IPv4Network | ipaddress.IPv6Network):
                raise ValueError(f"client_ip.trusted_proxies: expected networks, got {network!r}")
        self.header = name
        self.trusted_proxies = networks
        self._trusted = _NetworkSet(networks)

    def is_trusted(self, address: IPAddress) -> bool:
        """Whether ``address`` is one of the trusted proxies (IPv4-mapped counts as IPv4)."""
        return _normalise(address) in self._trusted

    def resolve(self, peer: str | IPAddress, header_lines: Sequence[str]) -> IPAddress:
        """The client address; raises :class:`BadClientAddress` for an unreadable entry the walk reaches.

        ``header_lines`` are all lines of the configured header, in the order
        received. A peer given as text is parsed like a header entry (a bad one
        raises too: a gateway that cannot name its peer must not guess).
        """
        address = parse_address(peer) if isinstance(peer, str) else _normalise(peer)
        if address not in self._trusted:
            return address
        if self.header == "x-forwarded-for":
            return self._walk(address, self._entries(header_lines), "x-forwarded-for entry")
        if self.header == "forwarded":
            return self._walk_forwarded(address, header_lines)
        return self._real_ip(address, header_lines)

    @staticmethod
    def _entries(header_lines: Sequence[str]) -> list[str]:
        entries: list[str] = []
        for line in header_lines:
            entries.extend(entry for entry in line.split(",") if entry.strip())
        return entries

    def _walk(self, peer: IPAddress, entries: list[str], label: str) -> IPAddress:
        answer = peer
        for position, entry in enumerate(reversed(entries), start=1):
            try:
                answer = parse_address(entry)
            except BadClientAddress:
                raise BadClientAddress(
                    f"{label} {position} from the right is not an IP address: {_echo(entry.strip())}"
                ) from None
            if answer not in self._trusted:
                return answer
        return answer  # all trusted: the leftmost (or the peer when there were no entries)

    def _walk_forwarded(self, peer: IPAddress, header_lines: Sequence[str]) -> IPAddress:
        elements: list[str] = []
        for line in header_lines:
            elements.extend(element for element in _split_list(line, ",") if element.strip())
        answer = peer
        for position, element in enumerate(reversed(elements), start=1):
            value = _forwarded_for(element, position)
            try:
                answer = parse_address(value)
            except BadClientAddress:
                raise BadClientAddress(
                    f"forwarded element {position} from the right: for= is not an IP address: {_echo(value)}"
                ) from None
            if answer not in self._trusted:
                return answer
        return answer

    def _real_ip(self, peer: IPAddress, header_lines: Sequence[str]) -> IPAddress:
        entries = self._entries(header_lines)
        if not entries:
            return peer
        try:
            return parse_address(entries[-1])
        except BadClientAddress:
            raise BadClientAddress(f"x-real-ip is not an IP address: {_echo(entries[-1].strip())}") from None
