"""The demo CRM process fixture, shared with the end-to-end tests."""

from tests.e2e.conftest import crm_port

__all__ = ["crm_port"]
