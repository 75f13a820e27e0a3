"""Adversarial tests: attack the running gateway and ask the CRM what got through (issue 5)."""
