"""Config files deleted, left half-written, or written slowly while the gateway watches them.

A reload is all or nothing: a file that is missing or does not validate keeps
the running policy (``config.reload_failed``, naming the file) and a good write
afterwards recovers. A file caught in the middle of being written is the
subtle case: YAML has no end marker, so the first half of a policy file is
often a valid policy without its lock-down. The gateway must not load a file
that is still changing.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.harness import HOME, OFFICE, POLICY, GatewayProcess
from tests.faults.support import Footprint, fetch, start_gateway

# The change every test ends with: the office loses /echo/projects.
FROZEN = copy.deepcopy(POLICY)
FROZEN["functions"]["projects"] = {"paths": ["/echo/projects"]}
FROZEN["rules"].append({"title": "Projects frozen", "action": "block", "function": "projects"})
PIECES = 12


async def wait_event(gw: GatewayProcess, name: str, seen_before: int, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = gw.events(name)
        if len(events) > seen_before:
            return events[-1]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {name} event:\n{gw.log_text()[-3000:]}")


async def assert_running_policy_is_the_original(gw: GatewayProcess) -> None:
    assert (await fetch(gw.port, "/echo/projects", source=OFFICE)).status == 200
    assert (await fetch(gw.port, "/echo/projects", source=HOME)).status == 403


async def recover_with_a_good_write(gw: GatewayProcess, directory: Path) -> None:
    reloads = len(gw.events("config.reloaded"))
    (directory / "policy.yaml").write_text(yaml.safe_dump(FROZEN, sort_keys=False))
    await wait_event(gw, "config.reloaded", reloads)
    assert (await fetch(gw.port, "/echo/projects", source=OFFICE)).status == 403
    assert (await fetch(gw.port, "/echo/other", source=HOME)).status == 403


def truncated_mid_value(text: str) -> str:
    """The file cut inside a flow sequence: what a writer that died half-way leaves, and invalid YAML."""
    flow = yaml.safe_dump(yaml.safe_load(text), sort_keys=False, default_flow_style=None)
    cut = flow.index("allowed_networks: [") + len("allowed_networks: [127.0.0")
    return flow[:cut]


@pytest.mark.parametrize(
    ("file", "damage"),
    [
        ("policy.yaml", "delete"),
        ("gateway.yaml", "delete"),
        ("policy.yaml", "truncate"),
        ("gateway.yaml", "truncate"),
    ],
    ids=[
        "policy file deleted",
        "main file deleted",
        "policy file left half-written (invalid)",
        "main file left half-written (invalid)",
    ],
)
async def test_a_damaged_config_file_keeps_the_running_policy_and_a_good_write_recovers(
    file: str, damage: str, tmp_path: Path, crm_port: int
) -> None:
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY)
    try:
        await assert_running_policy_is_the_original(gw)
        baseline = Footprint.of(gw)
        target = tmp_path / file
        original = target.read_text()
        failures = len(gw.events("config.reload_failed"))
        if damage == "delete":
            target.unlink()
        else:
            target.write_text(truncated_mid_value(original) if file == "policy.yaml" else original[:40] + "\n  [")
        failed = await wait_event(gw, "config.reload_failed", failures)
        assert failed["trigger"] == "file_change"
        assert any(file in error for error in failed["errors"]), failed
        await assert_running_policy_is_the_original(gw)
        if file == "gateway.yaml":
            target.write_text(original)
        await recover_with_a_good_write(gw, tmp_path)
        await baseline.assert_returned(gw, f"{file} {damage}d and recovered", fd_slack=1)
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize("file", ["policy.yaml", "gateway.yaml"], ids=["policy file", "main file"])
async def test_a_file_written_slowly_is_loaded_once_complete_never_half_way(
    file: str, tmp_path: Path, crm_port: int
) -> None:
    """A slow writer (scp, an editor saving in place, a config agent) truncates, then writes in pieces."""
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{crm_port}", policy=POLICY)
    try:
        await assert_running_policy_is_the_original(gw)
        target = tmp_path / file
        if file == "policy.yaml":
            final = yaml.safe_dump(FROZEN, sort_keys=False)
        else:
            final = target.read_text() + "mode: enforce\n"  # the same gateway, one line longer
        reloads, failures = len(gw.events("config.reloaded")), len(gw.events("config.reload_failed"))
        lines = final.splitlines(keepends=True)
        step = -(-len(lines) // PIECES)  # 12 pieces, 0.2 s apart: longer than a watch interval
        probes: list[int | None] = []

        async def write_slowly() -> None:
            with target.open("w") as handle:  # truncates first, like most writers
                for start in range(0, len(lines), step):
                    handle.write("".join(lines[start:start + step]))
                    handle.flush()
                    await asyncio.sleep(0.2)

        writer = asyncio.ensure_future(write_slowly())
        while not writer.done():
            probes.append((await fetch(gw.port, "/echo/projects", source=HOME)).status)
            await asyncio.sleep(0.05)
        await writer
        assert set(probes) == {403}, f"the lock-down lapsed while the file was being written: {probes}"
        await wait_event(gw, "config.reloaded", reloads)
        if file == "policy.yaml":
            assert (await fetch(gw.port, "/echo/projects", source=OFFICE)).status == 403
        await asyncio.sleep(1.5)  # nothing further is pending
        assert len(gw.events("config.reloaded")) == reloads + 1, "one reload, of the finished file"
        assert len(gw.events("config.reload_failed")) == failures, gw.events("config.reload_failed")
    finally:
        assert gw.stop() == 0
