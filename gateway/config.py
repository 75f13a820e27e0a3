"""Load everything: the main file, then its policy files, into one frozen Config.

A Config is built whole or not at all: any problem in any file raises
ConfigError listing every ``file:line: message``, so a running gateway that
fails to reload keeps the Config it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gateway.policy import Policy, load_policy
from gateway.settings import Settings, parse_settings
from gateway.yamlsrc import ConfigError, Problem, Problems, Where, load_yaml


@dataclass(frozen=True, slots=True)
class Config:
    settings: Settings
    policy: Policy

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file this config was read from (what a reload watches)."""
        return (self.settings.path, *self.settings.policy_files)


def load_config(path: Path | str, *, previous: Config | None = None) -> Config:
    """Load and check every file; ``previous`` (the running config) lets unchanged policy files be reused."""
    path = Path(path).absolute()
    data = load_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise ConfigError([Problem(Where(str(path), 1), "expected a mapping at the top of the file")])
    problems = Problems()
    settings = parse_settings(data, path, problems)
    problems.raise_if_any()
    policy = load_policy(settings, problems, previous=previous.policy if previous is not None else None)
    problems.raise_if_any()
    return Config(settings=settings, policy=policy)
