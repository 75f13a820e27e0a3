"""An open WebSocket is a request that lasts: it must not outlive what allowed it (review 7).

The upgrade is judged like any request; then the relay is judged again before each message
from the client and every ``WS_RECHECK`` seconds when quiet. A logout, a reload that blocks
its user, or the end of login hours close it with 1008 (policy violation).
"""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import aiohttp
import pytest

from gateway import proxy
from tests.e2e.harness import OFFICE, POLICY, Stack, stack
from tests.e2e.test_identity import login, policy_with, with_2fa
from tests.support.redis_server import RedisServer


async def open_socket(s: Stack, client: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    ws = await client.ws_connect(s.url("/ws/notifications"))
    greeting = await ws.receive(timeout=5)
    assert greeting.type == aiohttp.WSMsgType.TEXT
    await ws.send_str("before")
    assert (await ws.receive(timeout=5)).data == "before"
    return ws


async def assert_closed_by_policy(ws: aiohttp.ClientWebSocketResponse) -> None:
    message = await ws.receive(timeout=5)
    assert message.type == aiohttp.WSMsgType.CLOSE, message
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_a_logout_closes_the_sessions_open_websocket_before_its_next_message(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        jim = s.client(OFFICE)
        await login(jim, s)
        ws = await open_socket(s, jim)
        async with jim.get(s.url("/logout"), allow_redirects=False) as resp:
            assert resp.status in (302, 303)
        await ws.send_str("after")
        await assert_closed_by_policy(ws)
        closed = s.logs.events("websocket.closed")[-1]
        assert closed["user"] == "jim" and closed["reason"] == "session_ended"


async def suspend_jim(s: Stack) -> None:
    """A reload with a rule that blocks jim."""
    policy = copy.deepcopy(POLICY)
    policy["rules"].append({"id": "jim-out", "title": "jim is suspended", "action": "block", "users": ["jim"]})
    s.rewrite_policy(policy)
    assert await s.server.reload("test")


async def test_a_reload_that_blocks_the_user_closes_the_open_websocket(tmp_path: Path) -> None:
    async with stack(tmp_path) as s:
        jim = s.client(OFFICE)
        await login(jim, s)
        ws = await open_socket(s, jim)
        await suspend_jim(s)
        await ws.send_str("after")
        await assert_closed_by_policy(ws)
        assert s.logs.events("websocket.closed")[-1]["reason"] == "user_blocked"


async def test_a_quiet_websocket_is_closed_when_its_session_ends_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No message from the client: the periodic check closes it (a copy of the cookie logged out)."""
    monkeypatch.setattr(proxy, "WS_RECHECK", 0.2)
    async with stack(tmp_path) as s:
        jim = s.client(OFFICE)
        await login(jim, s)
        ws = await open_socket(s, jim)
        other_tab = s.client(OFFICE, cookie_jar=aiohttp.DummyCookieJar())
        cookie = "; ".join(f"{c.key}={c.value}" for c in jim.cookie_jar)
        async with other_tab.get(s.url("/logout"), headers={"Cookie": cookie}, allow_redirects=False) as resp:
            assert resp.status in (302, 303)
        await assert_closed_by_policy(ws)


async def test_control_an_active_websocket_outlives_the_idle_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket's traffic is activity: its request's cookie growing idle does not close it."""
    monkeypatch.setattr(proxy, "WS_RECHECK", 0.2)
    async with stack(tmp_path, session={"idle_timeout": "1s"}) as s:
        jim = s.client(OFFICE)
        await login(jim, s)
        ws = await open_socket(s, jim)
        for i in range(4):
            await asyncio.sleep(0.5)
            await ws.send_str(f"still here {i}")
            assert (await ws.receive(timeout=5)).data == f"still here {i}"
        await ws.close()
        assert not s.logs.events("websocket.closed")


async def test_a_reload_that_requires_a_second_factor_closes_a_socket_opened_without_one(tmp_path: Path) -> None:
    async with stack(tmp_path, **with_2fa(tmp_path)) as s:
        jim = s.client(OFFICE)
        await login(jim, s)
        ws = await open_socket(s, jim)
        s.rewrite_policy(policy_with(require_2fa=True))
        assert await s.server.reload("test")
        await ws.send_str("after")
        await assert_closed_by_policy(ws)
        assert s.logs.events("websocket.closed")[-1]["reason"] == "mfa_required"


async def test_a_reload_that_blocks_the_user_closes_the_socket_while_redis_is_down(tmp_path: Path) -> None:
    """Review 8: with the session store down the check passed the socket before asking the policy,
    which needs no store: a suspended user's socket relayed while his HTTP requests got 503."""
    server = RedisServer()
    server.start()
    try:
        session = {"store": "redis", "redis_url": server.url, "cookie_secure": False}
        async with stack(tmp_path, session=session) as s:
            jim = s.client(OFFICE)
            await login(jim, s)
            ws = await open_socket(s, jim)
            server.stop()
            await suspend_jim(s)
            await ws.send_str("after the suspension")
            await assert_closed_by_policy(ws)
    finally:
        server.stop()
