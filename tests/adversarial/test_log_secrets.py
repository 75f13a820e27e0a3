"""Secrets that reached a log by a side door (review 7): DESIGN.md §6 says passwords, TOTP codes,
cookies and Authorization values never appear in logs, and TOTP secrets are worse than any of them."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from tests.adversarial.support import raw_request, send_raw, status_of
from tests.e2e.harness import OFFICE, POLICY, stack
from tests.e2e.test_identity import JIM_SECRET, login, with_2fa

PASSWORD = "Hunter2-Very-Secret"
BOB_SECRET = "KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU"


def assert_absent(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} is in the log:\n" + "\n".join(
            line for line in text.splitlines() if secret in line)


def two_fa_policy() -> dict[str, Any]:
    policy = copy.deepcopy(POLICY)
    policy["defaults"]["require_2fa"] = True
    return policy


async def test_a_malformed_totp_secrets_file_never_puts_a_secret_in_the_log(tmp_path: Path) -> None:
    """An admin pastes bob's secret with a stray quote: PyYAML's error text quotes the line, and it
    was logged with totp.secrets_reload_failed. Now: the file, line, column and problem only."""
    async with stack(tmp_path, policy=two_fa_policy(), **with_2fa(tmp_path)) as s:
        assert (await login(s.client(OFFICE), s)).status == 303  # the good file is in use
        secrets_file = tmp_path / "totp-secrets.yaml"
        secrets_file.write_text(secrets_file.read_text() + f"bob:\n  secret: '{BOB_SECRET}\n  enrolled: '2024-01-01'\n")
        os.chmod(secrets_file, 0o600)
        await login(s.client(OFFICE), s)  # reads the file again
        failed = s.logs.events("totp.secrets_reload_failed")[-1]
        assert "totp-secrets.yaml:" in failed["error"] and "not valid YAML" in failed["error"]
        assert_absent(s.logs.getvalue(), BOB_SECRET[:16], BOB_SECRET[-16:])


async def test_a_secrets_file_broken_from_the_start_never_puts_a_secret_in_the_log(tmp_path: Path) -> None:
    """Never good: the error surfaced in a traceback (request.failed), its text quoting the secret."""
    (tmp_path / "totp-secrets.yaml").write_text(f"jim:\n  enrolled: '2024-01-01'\n   secret: {JIM_SECRET}\n")
    os.chmod(tmp_path / "totp-secrets.yaml", 0o600)
    async with stack(tmp_path, policy=two_fa_policy(),
                     totp={"issuer": "T", "secrets_file": "totp-secrets.yaml", "max_failures": 3}) as s:
        assert (await login(s.client(OFFICE), s)).status in (403, 500, 503)
        assert_absent(s.logs.getvalue(), JIM_SECRET[:16], JIM_SECRET[-16:])


async def test_a_password_in_the_query_of_a_refused_target_is_not_logged(tmp_path: Path) -> None:
    """A target with a '#' is refused, and request.bad_path echoed it whole, query included."""
    async with stack(tmp_path) as s:
        response = await send_raw(s.port, raw_request("GET", f"/login?username=jim&password={PASSWORD}#x"))
        assert status_of(response) == 400
        assert s.logs.events("request.bad_path")[-1]["error"].endswith("'/login?...'")
        assert_absent(s.logs.getvalue(), PASSWORD)


async def test_a_crm_session_in_the_path_of_a_refused_target_is_not_logged(tmp_path: Path) -> None:
    """';crm_session=' is stripped before forwarding, but the path filter, which runs first, echoed a
    path it refused into request.bad_path, the CRM session id with it."""
    async with stack(tmp_path) as s:
        jim = s.client(OFFICE)
        await login(jim, s)
        crm = {c.key: c.value for c in jim.cookie_jar}["crm_session"]
        response = await send_raw(s.port, raw_request("GET", f"/dashboard;crm_session={crm}/%2Fx"))
        assert status_of(response) == 400
        assert "crm_session=..." in s.logs.events("request.bad_path")[-1]["error"]
        assert_absent(s.logs.getvalue(), crm)


async def test_a_password_in_an_absolute_targets_userinfo_is_not_logged(tmp_path: Path) -> None:
    """Review 8: `GET http://jim:<password>@crm.example/a#x` is refused, and its echo kept the userinfo."""
    async with stack(tmp_path) as s:
        for target in (f"http://jim:{PASSWORD}@crm.example/a#x", f"ftp://jim:{PASSWORD}@crm.example/a"):
            response = await send_raw(s.port, raw_request("GET", target))
            assert status_of(response) == 400
        assert_absent(s.logs.getvalue(), PASSWORD)
        assert "'http://...@crm.example/a#...'" in s.logs.events("request.bad_path")[0]["error"]
