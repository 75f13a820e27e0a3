"""``crm-gateway serve`` as a real process: reload, drain, bounded memory on huge bodies (issue 2)."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from gateway import demo_crm
from tests.e2e.harness import (
    HOME,
    OFFICE,
    POLICY,
    GatewayProcess,
    free_port,
    main_config,
    stack,
    wait_for,
    write_config,
)

GiB = 1024**3


def gateway(tmp_path: Path, crm_port: int, policy: dict[str, Any] | None = None,
            **overrides: Any) -> GatewayProcess:
    port = free_port()
    main = main_config(crm_port, **{"listen": {"host": "127.0.0.1", "port": port}, **overrides})
    path = write_config(tmp_path, main, POLICY if policy is None else policy)
    process = GatewayProcess(path)
    process.start(port)
    return process


async def status_of(port: int, path: str, source: str = OFFICE) -> int:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with aiohttp.ClientSession(connector=connector) as client:
        async with client.get(f"http://127.0.0.1:{port}{path}", allow_redirects=False) as resp:
            return resp.status


async def test_reload_on_sighup_and_on_file_change_and_a_bad_file_keeps_the_running_policy(
    tmp_path: Path, crm_port: int
) -> None:
    gw = gateway(tmp_path, crm_port)
    try:
        assert await status_of(gw.port, "/echo/projects") == 200
        # 1. A broken file: the error names file:line, the old policy keeps serving.
        policy_file = tmp_path / "policy.yaml"
        good = policy_file.read_text()
        policy_file.write_text(good + "rules:\n  - title: dup\n    action: block\n")
        gw.signal(signal.SIGHUP)
        await wait_event(gw, "config.reload_failed", 0)
        failure = gw.events("config.reload_failed")[-1]
        assert any("policy.yaml:" in error for error in failure["errors"]), failure
        assert await status_of(gw.port, "/echo/projects") == 200
        # 2. A good change, picked up from the file alone (no signal).
        blocked = copy.deepcopy(POLICY)
        blocked["functions"]["projects"] = {"paths": ["/echo/projects"]}
        blocked["rules"].append({"title": "Projects frozen", "action": "block", "function": "projects"})
        reloads = len(gw.events("config.reloaded"))
        policy_file.write_text(yaml.safe_dump(blocked))
        await wait_event(gw, "config.reloaded", reloads)
        assert await status_of(gw.port, "/echo/projects") == 403
        assert gw.events("config.reloaded")[-1]["trigger"] == "file_change"
    finally:
        assert gw.stop() == 0


async def test_sigterm_drains_in_flight_requests_then_exits_0(tmp_path: Path, crm_port: int) -> None:
    gw = gateway(tmp_path, crm_port)
    try:
        async with aiohttp.ClientSession() as client:
            slow = asyncio.ensure_future(client.get(f"http://127.0.0.1:{gw.port}/slow?seconds=2"))
            await asyncio.sleep(0.5)
            gw.signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            # No longer accepting...
            with pytest.raises(aiohttp.ClientConnectionError):
                async with aiohttp.ClientSession() as other:
                    await other.get(f"http://127.0.0.1:{gw.port}/health")
            # ...but the request already running completes.
            resp = await slow
            assert resp.status == 200
            resp.release()
        assert gw.proc is not None
        assert await asyncio.get_running_loop().run_in_executor(None, gw.proc.wait, 10) == 0
        assert gw.events("gateway.draining")
    finally:
        gw.stop()


@pytest.mark.slow
async def test_a_1_gib_download_and_upload_stream_with_flat_memory(tmp_path: Path, crm_port: int) -> None:
    gw = gateway(tmp_path, crm_port, policy={})
    try:
        url = f"http://127.0.0.1:{gw.port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as client:
            async with client.get(f"{url}/echo/warm") as resp:
                await resp.read()
            baseline = gw.rss_bytes()
            peak = baseline
            received = 0
            async with client.get(f"{url}/download/large?size={GiB}") as resp:
                async for chunk in resp.content.iter_chunked(1 << 20):
                    received += len(chunk)
                    if received % (64 << 20) < (1 << 20):
                        peak = max(peak, gw.rss_bytes())
            assert received == GiB

            digest = hashlib.sha256()

            async def body() -> Any:
                nonlocal peak
                block = b"x" * (1 << 20)
                for index in range(1024):
                    digest.update(block)
                    if index % 64 == 0:
                        peak = max(peak, gw.rss_bytes())
                    yield block

            async with client.post(f"{url}/upload", data=body()) as resp:
                result = await resp.json()
            assert result["bytes"] == GiB
            assert result["sha256"] == digest.hexdigest()
        growth = peak - baseline
        print(f"gateway RSS: baseline {baseline >> 20} MiB, peak {peak >> 20} MiB, growth {growth >> 20} MiB")
        assert growth < 48 * 1024 * 1024
    finally:
        gw.stop()


async def test_a_client_leaving_mid_stream_cancels_the_upstream_request(tmp_path: Path) -> None:
    async with stack(tmp_path, policy={}) as s:
        crm_server = s.crm_runner.server
        assert crm_server is not None
        client = s.client(OFFICE, force_close=True)
        resp = await client.get(s.url(f"/download/large?size={GiB}"))
        await resp.content.readexactly(4 << 20)
        assert len(crm_server.connections) == 1
        resp.close()  # the client goes away after 4 MiB of 1 GiB
        deadline = time.monotonic() + 5
        while crm_server.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not crm_server.connections, "the gateway kept pulling from the CRM for nobody"
        async with s.client(HOME).get(s.url("/health")) as again:  # and it still serves
            assert again.status in (200, 403)


async def wait_event(gw: GatewayProcess, name: str, seen_before: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(gw.events(name)) > seen_before:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {name} event:\n{gw.log_text()[-3000:]}")


def rewrite_main(path: Path, **sections: dict[str, Any]) -> None:
    """The main file with the given sections' keys changed."""
    main = yaml.safe_load(path.read_text())
    for name, values in sections.items():
        main[name] = {**main.get(name, {}), **values}
    path.write_text(yaml.safe_dump(main, sort_keys=False))


async def test_a_reload_that_moves_the_upstream_sends_every_request_after_it_to_the_new_crm(tmp_path: Path) -> None:
    """The pooled connections to the old CRM are not reused (they were, while WebSockets and /ready
    followed the new address), and a restart is not needed."""
    async with stack(tmp_path) as s:
        office = s.client(OFFICE)
        async with office.get(s.url("/login")) as resp:
            assert resp.status == 200  # leaves a pooled connection to the first CRM
        old_pool = s.server.gateway.pool
        assert old_pool is not None and old_pool.idle == 1
        runner, port = await demo_crm.start("127.0.0.1", 0)
        try:
            rewrite_main(s.config_path, upstream={"url": f"http://127.0.0.1:{port}"})
            await s.reset_crm()
            assert await s.server.reload("test")
            for _ in range(3):
                async with office.get(s.url("/login")) as resp:
                    assert resp.status == 200
            async with aiohttp.ClientSession() as direct, direct.get(f"http://127.0.0.1:{port}/__crm/requests") as r:
                assert [record["path"] for record in await r.json()] == ["/login"] * 3
            assert await s.crm_requests() == []
            await wait_for(lambda: old_pool.connections == 0)
            assert not s.logs.events("config.restart_needed")
        finally:
            await runner.cleanup()


async def test_a_reload_that_changes_listen_or_session_says_a_restart_is_needed_until_one(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        port = s.port
        rewrite_main(s.config_path, listen={"port": free_port()}, session={"cookie_name": "renamed"})
        assert await s.server.reload("test")
        [event] = s.logs.events("config.restart_needed")
        assert (event["level"], event["sections"]) == ("warning", ["listen", "session"])
        # still the socket and the session settings it started with
        client = s.client(OFFICE)
        async with client.post(s.url("/login"), data={"username": "jim", "password": "demo"},
                               allow_redirects=False) as resp:
            assert s.port == port and resp.status == 302
            assert "crmgw_session" in resp.cookies and "renamed" not in resp.cookies
        assert await s.server.reload("test")  # said again: nothing restarted meanwhile
        assert [e["sections"] for e in s.logs.events("config.restart_needed")] == [["listen", "session"]] * 2
        rewrite_main(s.config_path, listen={"port": 0}, session={"cookie_name": "crmgw_session"})
        assert await s.server.reload("test")  # put back: nothing to restart for
        assert len(s.logs.events("config.restart_needed")) == 2


async def test_a_reload_applies_a_new_log_level(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        rewrite_main(s.config_path, logging={"level": "warning"})
        assert await s.server.reload("test")
        assert not s.logs.events("config.reloaded")  # already at the new level
        async with s.client(HOME).get(s.url("/dashboard")) as resp:
            assert resp.status == 403
        assert s.logs.events("access.denied")  # warnings still written
        rewrite_main(s.config_path, logging={"level": "info"})
        assert await s.server.reload("test")
        assert len(s.logs.events("config.reloaded")) == 1
