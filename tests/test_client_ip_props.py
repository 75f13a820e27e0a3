"""Properties of client-IP resolution that must hold for any header a client can send."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.client_ip import HEADERS, BadClientAddress, ClientIPResolver, parse_address

TRUSTED = (ipaddress.ip_network("192.168.1.0/24"), ipaddress.ip_network("2001:db8::/32"))
TRUSTED_PEERS = ["192.168.1.10", "::ffff:192.168.1.10", "2001:db8::5"]

# Header text built from the pieces that matter to the parsers, plus arbitrary text.
pieces = st.sampled_from(
    [",", ";", "=", '"', "\\", " ", ":", "[", "]", "%", "for", "For=", "_x", "unknown",
     "192.168.1.3", "203.0.113.5", "::ffff:", "2001:db8::1", "[2001:db9::1]:80", "1.2.3.4:99999"]
)
header_text = st.one_of(st.text(max_size=60), st.lists(pieces, max_size=12).map("".join))
header_lines = st.lists(header_text, max_size=4)
v4 = st.ip_addresses(v=4)
v6 = st.ip_addresses(v=6)


def is_trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(address.version == net.version and address in net for net in TRUSTED)


@pytest.mark.parametrize("header", HEADERS)
@settings(max_examples=300, deadline=None)
@given(peer=st.sampled_from(TRUSTED_PEERS), lines=header_lines)
def test_any_header_gives_an_address_or_bad_client_address(header: str, peer: str, lines: list[str]) -> None:
    """Whatever a trusted proxy relays, resolve() answers an address or BadClientAddress, nothing else."""
    resolver = ClientIPResolver(trusted_proxies=TRUSTED, header=header)
    try:
        result = resolver.resolve(peer, lines)
    except BadClientAddress as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert len(message) < 250
        return
    assert isinstance(result, ipaddress.IPv4Address | ipaddress.IPv6Address)
    assert getattr(result, "ipv4_mapped", None) is None  # mapped addresses come back as IPv4


@pytest.mark.parametrize("header", HEADERS)
@settings(max_examples=300, deadline=None)
@given(peer=st.one_of(v4, v6, v4.map(lambda a: ipaddress.IPv6Address(f"::ffff:{a}"))), lines=header_lines)
def test_untrusted_peer_always_wins(
    header: str, peer: ipaddress.IPv4Address | ipaddress.IPv6Address, lines: list[str]
) -> None:
    """A peer outside trusted_proxies is the client, whatever the headers say (and they never raise)."""
    expected = (peer.ipv4_mapped if isinstance(peer, ipaddress.IPv6Address) else None) or peer
    assume(not is_trusted(expected))
    resolver = ClientIPResolver(trusted_proxies=TRUSTED, header=header)
    assert resolver.resolve(peer, lines) == expected
    assert resolver.resolve(str(peer), lines) == expected


@settings(max_examples=300, deadline=None)
@given(
    chain=st.lists(st.one_of(v4, v6), min_size=1, max_size=6),
    hops=st.lists(st.sampled_from(["192.168.1.3", "192.168.1.200", "2001:db8::9"]), max_size=3),
)
def test_walk_returns_rightmost_untrusted_else_leftmost(
    chain: list[ipaddress.IPv4Address | ipaddress.IPv6Address], hops: list[str]
) -> None:
    """Against a naive model of real_ip_recursive: rightmost untrusted entry, else the leftmost."""
    entries = [str(address) for address in chain] + hops
    resolver = ClientIPResolver(trusted_proxies=TRUSTED, header="x-forwarded-for")
    parsed = [parse_address(entry) for entry in entries]
    untrusted = [address for address in parsed if not is_trusted(address)]
    expected = untrusted[-1] if untrusted else parsed[0]
    assert resolver.resolve("192.168.1.10", [", ".join(entries)]) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_parse_address_returns_or_raises_bad_client_address(text: str) -> None:
    try:
        address = parse_address(text)
    except BadClientAddress:
        return
    assert isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)


@settings(max_examples=300, deadline=None)
@given(st.one_of(v4, v6), st.integers(min_value=0, max_value=65535))
def test_parse_address_roundtrips_every_written_form(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    """Every spelling a proxy may write (plain, bracketed, with port, quoted) names the same host."""
    expected = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    expected = expected or address
    if address.version == 4:
        forms = [str(address), f"{address}:{port}", f'"{address}:{port}"']
    else:
        forms = [str(address), address.exploded, f"[{address}]", f"[{address}]:{port}"]
        forms.append(f'"[{address}]:{port}"')
    for form in forms:
        assert parse_address(form) == expected, form
