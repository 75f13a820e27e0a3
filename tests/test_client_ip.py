"""Client-IP resolution (DESIGN.md §3.1): nginx ``real_ip_recursive on`` semantics, table-driven."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pytest

from gateway.client_ip import HEADERS, BadClientAddress, ClientIPResolver, parse_address
from gateway.schema import IPNetwork

# The trusted set of nginx's ngx_http_realip_module documentation example:
#   set_real_ip_from 192.168.1.0/24; set_real_ip_from 192.168.2.1; set_real_ip_from 2001:0db8::/32;
NGINX_DOC = ("192.168.1.0/24", "192.168.2.1", "2001:0db8::/32")
LB = "192.168.1.10"  # a load balancer inside the trusted /24
BAD = BadClientAddress


def networks(*specs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(spec) for spec in specs)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


@dataclass(frozen=True)
class Case:
    description: str
    peer: str
    lines: tuple[str, ...]
    expected: str | type[BadClientAddress]
    header: str = "x-forwarded-for"
    trusted: tuple[str, ...] = NGINX_DOC


CASES = [
    # --- nginx documentation example, real_ip_recursive on ---
    Case("nginx doc: client then trusted 192.168.2.1", LB, ("203.0.113.5, 192.168.2.1",), "203.0.113.5"),
    Case("nginx doc: last untrusted wins over spoofed left part", LB,
         ("198.51.100.1, 203.0.113.5, 192.168.1.20",), "203.0.113.5"),
    Case("nginx doc: single untrusted entry", LB, ("203.0.113.5",), "203.0.113.5"),
    Case("nginx doc: trusted v6 proxy in the chain is skipped", LB,
         ("203.0.113.5, 2001:db8::7, 192.168.2.1",), "203.0.113.5"),
    Case("nginx doc: 192.168.2.2 is not trusted (only .1 is)", LB,
         ("203.0.113.5, 192.168.2.2",), "192.168.2.2"),
    Case("all entries trusted: the leftmost is the client", LB,
         ("192.168.1.3, 192.168.2.1, 192.168.1.77",), "192.168.1.3"),
    Case("no header from a trusted peer: the peer", LB, (), LB),
    Case("empty header line from a trusted peer: the peer", LB, ("",), LB),
    Case("only separators and blanks: the peer", LB, (" , ,, ",), LB),
    Case("empty list elements are skipped (RFC 9110 §5.6.1)", LB,
         ("203.0.113.5,, 192.168.1.4 ,",), "203.0.113.5"),
    # --- untrusted peers ---
    Case("untrusted peer: spoofed header ignored", "198.51.100.9", ("10.0.0.1",), "198.51.100.9"),
    Case("untrusted peer: garbage header ignored without error", "198.51.100.9",
         ("garbage, unknown, \x00",), "198.51.100.9"),
    Case("no trusted proxies at all: the peer, always", LB, ("203.0.113.5",), LB, trusted=()),
    Case("untrusted v6 peer ignores header", "2001:db9::1", ("203.0.113.5",), "2001:db9::1"),
    # --- several header lines ---
    Case("several lines are joined in order", LB,
         ("198.51.100.1", "203.0.113.5", "192.168.2.1"), "203.0.113.5"),
    Case("rightmost line is walked first", LB, ("203.0.113.5", "192.168.1.3, 198.51.100.7"), "198.51.100.7"),
    Case("all lines trusted: leftmost entry of first line", LB,
         ("192.168.1.3, 192.168.1.4", "192.168.2.1"), "192.168.1.3"),
    # --- IPv6 and IPv4-mapped ---
    Case("trusted v6 peer, v4 client", "2001:db8::1", ("203.0.113.5",), "203.0.113.5"),
    Case("trusted v6 peer, v6 client", "2001:db8::1", ("2001:db9::42",), "2001:db9::42"),
    Case("mapped v4 peer counts as the trusted v4 it is", "::ffff:192.168.1.10", ("203.0.113.5",),
         "203.0.113.5"),
    Case("mapped v4 peer outside trusted: itself, as IPv4", "::ffff:198.51.100.9", ("203.0.113.5",),
         "198.51.100.9"),
    Case("mapped entry is trusted via the v4 prefix", LB, ("203.0.113.5, ::ffff:192.168.1.3",),
         "203.0.113.5"),
    Case("mapped client entry is returned as IPv4", LB, ("::ffff:203.0.113.5",), "203.0.113.5"),
    Case("trusted list given as mapped v6 CIDR matches v4 peers", LB, ("203.0.113.5",), "203.0.113.5",
         trusted=("::ffff:192.168.1.0/120",)),
    # --- ports and zone ids ---
    Case("v4 entry with port", LB, ("203.0.113.5:51234",), "203.0.113.5"),
    Case("bracketed v6 entry with port", LB, ("[2001:db9::1]:443",), "2001:db9::1"),
    Case("bracketed v6 entry without port", LB, ("[2001:db9::1]",), "2001:db9::1"),
    Case("zone id stripped from peer", "fe80::1%eth0", ("203.0.113.5",), "fe80::1", trusted=()),
    Case("zone id stripped from entry", LB, ("fe80::1%eth0",), "fe80::1"),
    Case("trusted link-local peer with zone id", "fe80::1%eth0", ("203.0.113.5",), "203.0.113.5",
         trusted=("fe80::/10",)),
    # --- garbage reached vs not reached ---
    Case("garbage left of the answer is never parsed", LB, ("garbage, 203.0.113.5",), "203.0.113.5"),
    Case("garbage reached by the walk is refused", LB, ("203.0.113.5, garbage",), BAD),
    Case("garbage reached after skipping a trusted hop", LB, ("garbage, 192.168.1.3",), BAD),
    Case("'unknown' reached is refused", LB, ("unknown",), BAD),
    Case("bad port reached is refused", LB, ("203.0.113.5:99999",), BAD),
    Case("hostname reached is refused", LB, ("client.example.com",), BAD),
    Case("space-separated pair is one bad entry", LB, ("203.0.113.5 198.51.100.1",), BAD),
    # --- RFC 7239 Forwarded ---
    Case("forwarded: quoted v6 with port", LB, ('for="[2001:db8:cafe::17]:4711"',), "2001:db8:cafe::17",
         header="forwarded", trusted=("192.168.1.0/24",)),
    Case("forwarded: parameter name is case-insensitive, other pairs ignored", LB,
         ("proto=https;For=203.0.113.9;by=192.168.1.10",), "203.0.113.9", header="forwarded"),
    Case("forwarded: walk skips trusted element", LB,
         ("for=198.51.100.1, for=203.0.113.9, for=192.168.2.1",), "203.0.113.9", header="forwarded"),
    Case("forwarded: comma inside a quoted value does not split elements", LB,
         ('for=203.0.113.9;note="a,b"',), "203.0.113.9", header="forwarded"),
    Case("forwarded: quoted v4 with port", LB, ('for="203.0.113.9:8080"',), "203.0.113.9",
         header="forwarded"),
    Case("forwarded: obfuscated identifier reached is refused", LB, ("for=_hidden",), BAD,
         header="forwarded"),
    Case("forwarded: obfuscated identifier left of the answer is fine", LB,
         ("for=_hidden, for=203.0.113.9",), "203.0.113.9", header="forwarded"),
    Case("forwarded: 'unknown' reached is refused", LB, ("for=unknown",), BAD, header="forwarded"),
    Case("forwarded: element without for= reached is refused", LB, ("proto=https;host=crm",), BAD,
         header="forwarded"),
    Case("forwarded: element without for= left of the answer is fine", LB,
         ("proto=http, for=203.0.113.9",), "203.0.113.9", header="forwarded"),
    Case("forwarded: duplicate for= is refused", LB, ("for=203.0.113.9;for=198.51.100.1",), BAD,
         header="forwarded"),
    Case("forwarded: unterminated quote is refused", LB, ('for="203.0.113.9',), BAD, header="forwarded"),
    Case("forwarded: several lines", LB, ("for=198.51.100.1", "for=203.0.113.9;proto=https"),
         "203.0.113.9", header="forwarded"),
    Case("forwarded: obfuscated port is dropped", LB, ('for="203.0.113.9:_p1"',), "203.0.113.9",
         header="forwarded"),
    Case("forwarded: untrusted peer ignores even malformed header", "198.51.100.9", ('for="',),
         "198.51.100.9", header="forwarded"),
    # --- X-Real-IP ---
    Case("x-real-ip: single address", LB, ("203.0.113.5",), "203.0.113.5", header="x-real-ip"),
    Case("x-real-ip: several lines, rightmost taken", LB, ("198.51.100.1", "203.0.113.5"), "203.0.113.5",
         header="x-real-ip"),
    Case("x-real-ip: comma list, rightmost taken", LB, ("198.51.100.1, 203.0.113.5",), "203.0.113.5",
         header="x-real-ip"),
    Case("x-real-ip: a trusted address is still the answer (nothing to walk past)", LB, ("192.168.1.3",),
         "192.168.1.3", header="x-real-ip"),
    Case("x-real-ip: garbage on the left is never parsed", LB, ("garbage, 203.0.113.5",), "203.0.113.5",
         header="x-real-ip"),
    Case("x-real-ip: garbage taken is refused", LB, ("garbage",), BAD, header="x-real-ip"),
    Case("x-real-ip: absent from a trusted peer: the peer", LB, (), LB, header="x-real-ip"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.description for case in CASES])
def test_resolve(case: Case) -> None:
    resolver = ClientIPResolver(trusted_proxies=networks(*case.trusted), header=case.header)
    if isinstance(case.expected, str):
        assert resolver.resolve(case.peer, case.lines) == ip(case.expected)
    else:
        with pytest.raises(case.expected):
            resolver.resolve(case.peer, case.lines)


def test_resolve_accepts_address_objects_for_the_peer() -> None:
    resolver = ClientIPResolver(trusted_proxies=networks(*NGINX_DOC), header="x-forwarded-for")
    assert resolver.resolve(ip("::ffff:192.168.1.10"), ["203.0.113.5"]) == ip("203.0.113.5")
    assert resolver.resolve(ip("198.51.100.9"), ["203.0.113.5"]) == ip("198.51.100.9")


def test_results_are_plain_ipv4_for_mapped_addresses() -> None:
    resolver = ClientIPResolver(trusted_proxies=(), header="x-forwarded-for")
    result = resolver.resolve("::ffff:198.51.100.9", [])
    assert isinstance(result, ipaddress.IPv4Address)


def test_error_names_the_entry_position() -> None:
    resolver = ClientIPResolver(trusted_proxies=networks(*NGINX_DOC), header="x-forwarded-for")
    with pytest.raises(BadClientAddress, match=r"entry 2 from the right.*'nope'"):
        resolver.resolve(LB, ["203.0.113.5, nope, 192.168.1.3"])


def test_error_never_echoes_more_than_100_characters() -> None:
    resolver = ClientIPResolver(trusted_proxies=networks(*NGINX_DOC), header="x-forwarded-for")
    junk = "A" * 5000
    with pytest.raises(BadClientAddress) as caught:
        resolver.resolve(LB, [junk])
    assert "A" * 101 not in str(caught.value)
    assert len(str(caught.value)) < 200


@dataclass(frozen=True)
class Parse:
    description: str
    text: str
    expected: str | None  # None: BadClientAddress


PARSES = [
    Parse("plain v4", "203.0.113.5", "203.0.113.5"),
    Parse("surrounding whitespace", "  203.0.113.5\t", "203.0.113.5"),
    Parse("surrounding quotes", '"203.0.113.5"', "203.0.113.5"),
    Parse("v4 with port", "203.0.113.5:80", "203.0.113.5"),
    Parse("plain v6", "2001:db8::1", "2001:db8::1"),
    Parse("v6 in brackets", "[2001:db8::1]", "2001:db8::1"),
    Parse("v6 in brackets with port", "[2001:db8::1]:4711", "2001:db8::1"),
    Parse("quoted bracketed v6 with port", '"[2001:db8::1]:4711"', "2001:db8::1"),
    Parse("zone id", "fe80::1%eth0", "fe80::1"),
    Parse("zone id inside brackets with port", "[fe80::1%25eth0]:80", "fe80::1"),
    Parse("mapped v4 becomes v4", "::ffff:1.2.3.4", "1.2.3.4"),
    Parse("bracketed mapped v4 with port becomes v4", "[::ffff:1.2.3.4]:8080", "1.2.3.4"),
    Parse("empty", "", None),
    Parse("only whitespace", "   ", None),
    Parse("unknown (RFC 7239)", "unknown", None),
    Parse("obfuscated identifier (RFC 7239)", "_hidden", None),
    Parse("hostname", "crm.example.com", None),
    Parse("leading zeros are ambiguous (octal?)", "010.1.1.1", None),
    Parse("too many octets", "1.2.3.4.5", None),
    Parse("v4 in brackets", "[1.2.3.4]", None),
    Parse("port out of range", "1.2.3.4:65536", None),
    Parse("empty port", "1.2.3.4:", None),
    Parse("non-numeric port", "1.2.3.4:http", None),
    Parse("unclosed bracket", "[2001:db8::1", None),
    Parse("junk after bracket", "[2001:db8::1]x", None),
    Parse("empty zone id", "fe80::1%", None),
    Parse("zone id on v4", "1.2.3.4%eth0", None),
    Parse("unbalanced quote", '"1.2.3.4', None),
    Parse("non-ASCII digits", "\u0661.\u0662.\u0663.\u0664", None),
    Parse("CIDR is not an address", "10.0.0.0/8", None),
    Parse("integer form", "3232235777", None),
]


@pytest.mark.parametrize("case", PARSES, ids=[case.description for case in PARSES])
def test_parse_address(case: Parse) -> None:
    if case.expected is None:
        with pytest.raises(BadClientAddress):
            parse_address(case.text)
    else:
        assert parse_address(case.text) == ip(case.expected)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("x-forwarded-for", "x-forwarded-for"), ("X-Forwarded-For", "x-forwarded-for"),
     ("Forwarded", "forwarded"), ("x-real-ip", "x-real-ip")],
    ids=["lower case", "mixed case is lowered", "forwarded", "x-real-ip"],
)
def test_construction_normalises_header(header: str, expected: str) -> None:
    assert ClientIPResolver(trusted_proxies=(), header=header).header == expected
    assert expected in HEADERS


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trusted_proxies": (), "header": "x-client-ip"}, "expected one of"),
        ({"trusted_proxies": (), "header": ""}, "expected one of"),
        ({"trusted_proxies": ("10.0.0.0/8",), "header": "forwarded"}, "expected networks"),
    ],
    ids=["unknown header", "empty header", "strings instead of networks"],
)
def test_construction_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClientIPResolver(**kwargs)  # type: ignore[arg-type]


def test_many_trusted_networks_still_match_exactly() -> None:
    """The prefix-indexed table agrees with a naive scan over a large, mixed list."""
    trusted = [ipaddress.ip_network(f"10.{i}.0.0/16") for i in range(200)]
    trusted += [ipaddress.ip_network(f"2001:db8:{i:x}::/48") for i in range(200)]
    trusted += [ipaddress.ip_network("172.16.5.5/32"), ipaddress.ip_network("100.64.0.0/10")]
    resolver = ClientIPResolver(trusted_proxies=trusted, header="x-forwarded-for")
    probes = ["10.0.0.1", "10.199.255.255", "10.200.0.1", "172.16.5.5", "172.16.5.6", "100.127.1.1",
              "100.128.0.1", "2001:db8:c7::1", "2001:db8:c8::1", "::ffff:10.5.5.5", "192.0.2.1"]
    for probe in probes:
        address = parse_address(probe)
        naive = any(address.version == net.version and address in net for net in trusted)
        assert resolver.is_trusted(address) is naive, probe
