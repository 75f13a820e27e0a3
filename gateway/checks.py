"""``crm-gateway check`` warnings: the policy's lock-out checks plus deployment ones (DESIGN.md §6)."""

from __future__ import annotations

from datetime import datetime

from gateway.config import Config


def warnings_for(config: Config, *, now: datetime) -> list[str]:
    settings = config.settings
    out = list(config.policy.warnings(now))
    where = str(settings.path)
    if settings.session.store == "cookie" and settings.totp is not None:
        out.append(
            f"{where}: 2FA is on with session.store 'cookie': replay and lock-out counters are not "
            "shared between processes or replicas; fine for one process, use redis for more"
        )
    return out
