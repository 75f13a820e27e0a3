"""Fixtures shared by the policy tests: the DESIGN.md §2 example policy and policy builders."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from gateway.policy import Policy, load_policy
from gateway.settings import Settings, load_settings
from gateway.yamlsrc import Problems
from tests.policy.world import COUNTRIES, FIXTURES, MONDAY, PolicyMaker, write_country_db


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
        rules: str,
        *,
        main: str = "",
        geoip: bool = True,
        extra_files: dict[str, str] | None = None,
        policy_files: list[str] | None = None,
    ) -> list[str]:
        settings, problems = _settings(
            tmp_path, rules, main=main, geoip=geoip, extra_files=extra_files, policy_files=policy_files
        )
        load_policy(settings, problems, now=MONDAY)
        folder = f"{tmp_path}/"  # messages naming a second place show it relative, like the first
        return [f"{Path(p.where.file).name}:{p.where.line}: {p.message.replace(folder, '')}" for p in problems.items]

    return problems_of


def _settings(
    folder: Path,
    rules: str,
    *,
    main: str,
    geoip: bool,
    extra_files: dict[str, str] | None,
    policy_files: list[str] | None = None,
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
    main_text += f"policy_files: {policy_files or files}\n" + textwrap.dedent(main)
    (folder / "gateway.yaml").write_text(main_text, encoding="utf-8")
    return load_settings(folder / "gateway.yaml"), Problems()
