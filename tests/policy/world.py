"""The test world of tests/policy: addresses, people's clients, times, and builders."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gateway.policy import Policy, RequestFacts

FIXTURES = Path(__file__).parent / "fixtures"

# Where the test world's addresses are.
OFFICE = "193.167.2.10"  # in allowed_networks (193.167.2.0/24), GB
WAREHOUSE = "193.167.1.70"  # the warehouse connection, in allowed_networks, GB
OFFICE_V6 = "2001:db8:10::25"  # in allowed_networks (2001:db8:10::/48), GB
HOME = "81.2.69.142"  # a GB home line, outside allowed_networks
FRANCE = "5.135.10.20"  # abroad, FR
IRELAND = "62.40.1.1"  # abroad, IE
SYDNEY = "1.128.5.5"  # abroad, AU
GERMANY_V6 = "2001:db8:99::1"  # abroad, DE
PRIVATE = "10.9.8.7"  # not in the GeoIP database: no country

COUNTRIES = {
    "193.167.0.0/16": "GB",
    "81.2.69.0/24": "GB",
    "5.135.0.0/16": "FR",
    "62.40.0.0/16": "IE",
    "1.128.0.0/11": "AU",
    "2001:db8:10::/48": "GB",
    "2001:db8:99::/48": "DE",
}

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"
MOBILE_APP = "AcmeCRM-Mobile/4.2 (Android 14)"

# Monday 23 November 2026, 10:00 UTC: 10:00 in London, 21:00 in Sydney. Everyone's
# login hours hold, and alice's travel exemption (expires 2026-12-31) is active.
MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def write_country_db(path: Path, countries: dict[str, str], *, flat: bool = False) -> Path:
    """A tiny MaxMind DB: MaxMind's ``country.iso_code`` schema, or the flat ``country_code`` one."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="Test-Country")
    for network, code in countries.items():
        record = {"country_code": code} if flat else {"country": {"iso_code": code, "names": {"en": code}}}
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def make_facts(
    ip: str,
    path: str = "/",
    *,
    user: str | None = None,
    method: str = "GET",
    ua: str = BROWSER,
    at: datetime = MONDAY,
) -> RequestFacts:
    return RequestFacts(
        client_ip=ipaddress.ip_address(ip),
        method=method,
        path=path,
        user_agent=ua,
        user=user,
        at=at,
    )


PolicyMaker = Callable[..., Policy]  # the make_policy fixture: YAML text -> Policy
