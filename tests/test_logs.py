"""The log stream: one JSON object per line, even when several processes share it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
