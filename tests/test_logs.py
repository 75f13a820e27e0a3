"""The log stream: one JSON object per line, even when several processes share it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from structlog.testing import capture_logs

from gateway.app import server_logger

WRITER = """
from gateway import logs
logs.configure(level="info", fmt="json")
log = logs.get_logger("test")
for i in range(3000):
    log.info("config.reloaded", worker={worker}, n=i, files=["/etc/crm-gateway/policy.yaml"])
"""


def test_workers_sharing_stdout_never_interleave_lines(tmp_path: Path) -> None:
    # serve --workers N hands every worker the same stdout; the image sets PYTHONUNBUFFERED.
    out = tmp_path / "gateway.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with out.open("ab") as sink:
        writers = [
            subprocess.Popen([sys.executable, "-c", WRITER.format(worker=w)], stdout=sink, env=env)
            for w in range(2)
        ]
        assert [w.wait(60) for w in writers] == [0, 0]
    lines = out.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # raises on a torn line
    assert len(events) == 6000
    assert sorted(e["n"] for e in events if e["worker"] == 1) == list(range(3000))


def test_aiohttp_debug_notes_stay_debug_and_its_errors_stay_errors() -> None:
    # In debug mode aiohttp notes every client that leaves mid-request; that is no server error.
    logger = server_logger()
    with capture_logs() as events:
        logger.debug("Ignored premature client disconnection")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("Error handling request")
    assert [(e["event"], e["log_level"]) for e in events] == [
        ("http.server_note", "debug"), ("http.server_error", "error")]
    assert events[0]["detail"] == "Ignored premature client disconnection"
    assert events[1]["exc_info"][0] is RuntimeError
    assert logging.getLogger("gateway.http").propagate is False
