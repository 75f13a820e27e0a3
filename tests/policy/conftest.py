"""Shared fixtures: the DESIGN.md §2 example policy, a test GeoIP database, fact builders."""

from __future__ import annotations

import ipaddress
import shutil
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from gateway.policy import Policy, RequestFacts, load_policy
from gateway.settings import Settings, load_settings
from gateway.yamlsrc import Problems

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


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tests/policy/fixtures with the test GeoIP database beside it."""
    target = tmp_path_factory.mktemp("example")
    for item in FIXTURES.iterdir():
        shutil.copy(item, target / item.name)
    write_country_db(target / "country.mmdb", COUNTRIES)
    return target


@pytest.fixture(scope="session")
def example(example_dir: Path) -> Policy:
    """The DESIGN.md §2 example policy, loaded through the real loader."""
    settings = load_settings(example_dir / "gateway.yaml")
    problems = Problems()
    policy = load_policy(settings, problems, now=MONDAY)
    assert not problems, [str(p) for p in problems.items]
    return policy


PolicyMaker = Callable[..., Policy]


@pytest.fixture
def make_policy(tmp_path: Path) -> PolicyMaker:
    """Build a policy from YAML text: ``make_policy(rules_text, main_extra=..., people=...)``.

    The rules text goes to ``rules.yaml``; the main file gets a GeoIP database
    (the test one) unless ``geoip=False``. Problems fail the test.
    """

    def build(
        rules: str,
        *,
        main: str = "",
        geoip: bool = True,
        now: datetime = MONDAY,
        extra_files: dict[str, str] | None = None,
    ) -> Policy:
        settings, problems = _settings(tmp_path, rules, main=main, geoip=geoip, extra_files=extra_files)
        policy = load_policy(settings, problems, now=now)
        assert not problems, [str(p) for p in problems.items]
        return policy

    return build


@pytest.fixture
def policy_problems(tmp_path: Path) -> Callable[..., list[str]]:
    """The problems a policy text produces, as ``rules.yaml:LINE: message`` strings."""

    def problems_of(
        rules: str, *, main: str = "", geoip: bool = True, extra_files: dict[str, str] | None = None
    ) -> list[str]:
        settings, problems = _settings(tmp_path, rules, main=main, geoip=geoip, extra_files=extra_files)
        load_policy(settings, problems, now=MONDAY)
        return [f"{Path(p.where.file).name}:{p.where.line}: {p.message}" for p in problems.items]

    return problems_of


def _settings(
    folder: Path, rules: str, *, main: str, geoip: bool, extra_files: dict[str, str] | None
) -> tuple[Settings, Problems]:
    (folder / "rules.yaml").write_text(textwrap.dedent(rules).lstrip("\n"), encoding="utf-8")
    files = ["rules.yaml"]
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        files.append(name)
    if geoip and not (folder / "country.mmdb").exists():
        write_country_db(folder / "country.mmdb", COUNTRIES)
    main_text = "upstream: {url: 'http://crm.test:8000'}\n"
    if geoip:
        main_text += "geoip: {database: country.mmdb}\n"
    main_text += f"policy_files: {files}\n" + textwrap.dedent(main)
    (folder / "gateway.yaml").write_text(main_text, encoding="utf-8")
    return load_settings(folder / "gateway.yaml"), Problems()
