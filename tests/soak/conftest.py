"""Soak options: ``--soak-seconds`` (or ``CRMGW_SOAK_SECONDS``), and the demo CRM process fixture.

The option is registered here, so it is known when the soak folder or file is
named on the command line: ``pytest tests/soak --soak-seconds 300``. The
environment variable works however pytest is started.
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import crm_port

__all__ = ["crm_port"]

DEFAULT_SECONDS = 30.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak-seconds", type=float, default=None,
                     help=f"how long the load soak runs (default {DEFAULT_SECONDS:g}, or CRMGW_SOAK_SECONDS)")


@pytest.fixture
def soak_seconds(request: pytest.FixtureRequest) -> float:
    option = request.config.getoption("--soak-seconds")
    if option is not None:
        return float(option)
    return float(os.environ.get("CRMGW_SOAK_SECONDS", DEFAULT_SECONDS))
