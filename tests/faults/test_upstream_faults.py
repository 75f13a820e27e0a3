"""A CRM that refuses, resets, talks garbage or hangs: the gateway answers 502/504 or cuts, and stays whole.

Once the status line has gone out the only honest signal left is to cut the
client's connection, so a client never mistakes half a download for all of it.
Every fault is repeated concurrently while a healthy request goes through, and
afterwards the gateway must have let go of its upstream connections and be back
to its baseline of file descriptors and memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import GatewayProcess, free_port, wait_for
from tests.faults import upstreams
from tests.faults.support import Footprint, Outcome, fetch, start_gateway

READ_TIMEOUT = 1.0
REPEAT = 8


@dataclass(frozen=True)
class Fault:
    path: str
    status: int | None  # what the client gets; None: the connection is cut after the head
    event: str  # what the gateway logs, with the request id
    slow: bool = False  # the gateway has to wait read_timeout to know


FAULTS = {
    "malformed HTTP instead of a status line: 502": Fault("/garbage", 502, "upstream.failed"),
    "connection closed without an answer: 502": Fault("/close", 502, "upstream.failed"),
    "hangs before the headers: 504 after read_timeout": Fault("/hang-headers", 504, "upstream.failed", slow=True),
    "reset mid-body (Content-Length): cut": Fault("/reset", None, "upstream.broken_body"),
    "reset mid-body (chunked): cut": Fault("/reset-chunked", None, "upstream.broken_body"),
    "reset mid-body (length only known at close): cut": Fault("/reset-unframed", None, "upstream.broken_body"),
    "hangs mid-body (Content-Length): cut after read_timeout": Fault("/hang-body", None, "upstream.broken_body",
                                                                     slow=True),
    "hangs mid-body (chunked): cut after read_timeout": Fault("/hang-chunked", None, "upstream.broken_body",
                                                              slow=True),
}


@pytest.fixture(scope="module")
def faulty() -> Iterator[upstreams.FaultyCRM]:
    with upstreams.running() as crm:
        yield crm


@pytest.fixture(scope="module")
def gateway(faulty: upstreams.FaultyCRM, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("upstream-faults"), faulty.url,
                       upstream={"read_timeout": READ_TIMEOUT})
    # Every fault once, so what is allocated on first use is part of each test's baseline.
    asyncio.run(warm_up(gw))
    try:
        yield gw
    finally:
        assert gw.stop() == 0


def check_outcome(fault: Fault, outcome: Outcome) -> None:
    assert outcome.request_id, outcome
    if fault.status is not None:
        assert (outcome.status, outcome.error) == (fault.status, None), outcome
        assert outcome.request_id.encode() in outcome.body, "the error page names the request id"
    else:
        # The head (200) went out before the fault: the body must end in a broken connection.
        assert (outcome.status, outcome.error) == (200, "ClientPayloadError"), outcome
    if fault.slow:
        assert READ_TIMEOUT * 0.9 <= outcome.seconds < READ_TIMEOUT + 2, outcome


async def warm_up(gw: GatewayProcess) -> None:
    await asyncio.gather(*(fetch(gw.port, fault.path) for fault in FAULTS.values()))


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
async def test_upstream_fault(fault: Fault, gateway: GatewayProcess, faulty: upstreams.FaultyCRM) -> None:
    await wait_for(lambda: faulty.open == 0)
    baseline = Footprint.of(gateway)
    started = len(faulty.seen)

    hurt = [asyncio.ensure_future(fetch(gateway.port, fault.path)) for _ in range(REPEAT)]
    await asyncio.sleep(0.1)
    healthy = await fetch(gateway.port, "/ok")  # others are served meanwhile, at once
    outcomes = await asyncio.gather(*hurt)

    assert (healthy.status, healthy.body) == (200, b"ok\n")
    assert healthy.seconds < 0.5, f"a healthy request waited {healthy.seconds:.2f}s behind the fault"
    for outcome in outcomes:
        check_outcome(fault, outcome)
    assert faulty.seen[started:].count(fault.path) == REPEAT, "each request reached the CRM once (no retries)"

    events = {e.get("request_id"): e for e in gateway.events(fault.event)}
    for outcome in outcomes:
        event = events.get(outcome.request_id)
        assert event is not None, f"no {fault.event} for {outcome.request_id}"
        assert event["path"] == fault.path and event["method"] == "GET", event

    await wait_for(lambda: faulty.open == 0, timeout=5)  # the gateway let go of every upstream connection
    await baseline.assert_returned(gateway, fault.path)


async def test_an_upstream_that_refuses_connections_is_a_502_page(tmp_path: Path) -> None:
    closed_port = free_port()  # nothing listens here
    gw = start_gateway(tmp_path, f"http://127.0.0.1:{closed_port}")
    try:
        warm = await fetch(gw.port, "/dashboard")
        assert warm.status == 502
        baseline = Footprint.of(gw)
        started = time.monotonic()
        outcomes = await asyncio.gather(*(fetch(gw.port, "/dashboard") for _ in range(REPEAT)))
        assert time.monotonic() - started < 2, "a refused connection is known at once, not after a timeout"
        for outcome in outcomes:
            assert (outcome.status, outcome.error) == (502, None), outcome
            assert outcome.request_id and outcome.request_id.encode() in outcome.body
            assert b"The CRM is not answering right now" in outcome.body
        logged = {e["request_id"]: e for e in gw.events("upstream.failed")}
        assert {o.request_id for o in outcomes} <= set(logged)
        assert all(logged[o.request_id]["reason"] == "upstream_unavailable" for o in outcomes)
        health = await fetch(gw.port, "/_gateway/health")
        assert health.status == 200
        await baseline.assert_returned(gw, "refused connections")
    finally:
        assert gw.stop() == 0


@pytest.mark.parametrize(
    ("path", "status"),
    [("/big-header", 200), ("/huge-header", 502)],
    ids=["a 12 KiB Set-Cookie passes, as a 12 KiB client header does", "a 20 KiB one is a 502, as from a client"],
)
async def test_the_crm_may_send_header_lines_as_long_as_clients_may(
    path: str, status: int, gateway: GatewayProcess
) -> None:
    outcome = await fetch(gateway.port, path)
    assert (outcome.status, outcome.error) == (status, None), outcome
    if status == 200:
        assert outcome.body == b"ok\n"
