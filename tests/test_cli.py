"""The command line (DESIGN.md §1): check, explain, overrides, run as a real process."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "gateway.yaml"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of config/ (check may write nothing, but a copy keeps the tree clean regardless)."""
    target = tmp_path / "config"
    shutil.copytree(REPO / "config", target)
    return target / "gateway.yaml"


def test_check_passes_on_the_example_config(example: Path) -> None:
    result = run("check", "-c", str(example))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")


def test_time_zones_do_not_need_the_hosts_time_zone_database(example: Path) -> None:
    """Slim and distroless images may have no /usr/share/zoneinfo, or one without the legacy names
    (Debian trixie moved US/Central and the like to tzdata-legacy): the tzdata package answers then."""
    people = example.parent / "people.yaml"
    people.write_text(people.read_text().replace("timezone: Australia/Sydney", "timezone: US/Central"))
    assert "US/Central" in people.read_text()
    result = subprocess.run([sys.executable, "-m", "gateway", "check", "-c", str(example)], capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False, env={**os.environ, "PYTHONTZPATH": ""})
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_reports_every_error_with_file_and_line_and_exits_1(example: Path) -> None:
    rules = example.parent / "rules.yaml"
    lines = rules.read_text().splitlines()
    lines.append("  - title: Broken rule")
    lines.append("    action: maybe")
    lines.append("    function: no-such-function")
    rules.write_text("\n".join(lines) + "\n")
    result = run("check", "-c", str(example))
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert any(e.startswith(f"{rules}:{len(lines) - 1}:") and "action" in e for e in errors), errors
    assert any(e.startswith(f"{rules}:{len(lines)}:") and "no-such-function" in e for e in errors), errors


def use_redis(example: Path) -> None:
    data = yaml.safe_load(example.read_text())
    data["session"] = {**data.get("session", {}), "store": "redis", "redis_url": "redis://127.0.0.1:1/0"}
    example.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("command", ["check", "serve"])
def test_several_workers_with_the_cookie_store_are_refused(example: Path, command: str) -> None:
    """Each worker would keep its own used TOTP codes, counters, bans and logouts (DESIGN.md §4: they must be
    shared): a code was accepted once per worker, and a cookie logged out on one still worked on another."""
    result = run(command, "-c", str(example), "--workers", "4")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{example}: session.store is 'cookie' with 4 workers"), result.stderr
    assert "workers.started" not in result.stdout + result.stderr
    assert run("check", "-c", str(example)).returncode == 0  # one worker: fine
    use_redis(example)
    assert run("check", "-c", str(example), "--workers", "4").returncode == 0


def test_a_worker_started_on_files_unsafe_for_several_refuses_to_serve(example: Path) -> None:
    """A worker the parent (re)starts after an edit reads the files anew: a login section with the cookie
    store then refuses it, as the parent's start and every worker's reload do."""
    result = run("serve", "-c", str(example), "--worker-count", "2")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{example}: session.store is 'cookie' with 2 workers"), result.stderr


def test_explain_json_for_pat_and_billing(example: Path) -> None:
    result = run("explain", "-c", str(example), "--ip", "127.0.0.1", "--user", "pat", "--path", "/billing/7",
                 "--at", "2026-11-24T10:00:00+00:00", "--json")
    assert result.returncode == 0, result.stderr
    decision = json.loads(result.stdout)
    assert decision["decision"] == "deny"
    assert decision["reason"] == "function_blocked"
    assert decision["channel"] == "web"
    assert decision["functions"] == ["billing"]
    deciding = [entry for entry in decision["trace"] if entry["deciding"]]
    assert len(deciding) == 1 and deciding[0]["rule_id"] == decision["rule_id"]


def test_explain_text_marks_the_deciding_rule(example: Path) -> None:
    result = run("explain", "-c", str(example), "--ip", "127.0.0.9", "--path", "/dashboard",
                 "--at", "2026-11-24T10:00:00+00:00")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("DENY (ip_not_allowed)")
    assert "* defaults.ip_lockdown" in result.stdout


def test_explain_rejects_a_path_the_gateway_would_answer_400(example: Path) -> None:
    result = run("explain", "-c", str(example), "--ip", "127.0.0.1", "--path", "/billing%2Fx")
    assert result.returncode == 2
    assert "400" in result.stderr


def test_overrides_lists_alices_with_reasons(example: Path) -> None:
    result = run("overrides", "-c", str(example))
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    assert "Travels to client sites" in result.stdout


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{tmp_path / 'nope.yaml'}:1: file not found"


def break_rules(example: Path) -> tuple[Path, int]:
    rules = example.parent / "rules.yaml"
    lines = rules.read_text().splitlines()
    lines.append("  - title: Broken rule")
    lines.append("    action: maybe")
    rules.write_text("\n".join(lines) + "\n")
    return rules, len(lines)


def test_serve_with_workers_reports_a_bad_policy_with_file_and_line_and_starts_no_worker(example: Path) -> None:
    rules, line = break_rules(example)
    result = run("serve", "-c", str(example), "--workers", "2")
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert any(e.startswith(f"{rules}:{line}:") and "action" in e for e in errors), errors
    assert len(errors) == len(set(errors)), "each problem printed once, by the one checking child"
    assert "workers.started" not in result.stdout + result.stderr


def test_serve_with_workers_reports_a_bad_main_file_and_exits_1(example: Path) -> None:
    example.write_text(example.read_text() + "\nno_such_setting: 1\n")
    result = run("serve", "-c", str(example), "--workers", "2")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{example}:"), result.stderr
    assert "workers.started" not in result.stdout + result.stderr


WORKERS_PARENT = """
import sys
import gateway.workers

started = []
gateway.workers.run_workers = lambda config, **options: started.append(options) or 0
from gateway.cli import main

code = main(["serve", "-c", sys.argv[1], "--workers", "2"])
assert code == 0 and started == [{"workers": 2, "drain_timeout": 30.0}], (code, started)
held = sorted(name for name in sys.modules if name.startswith(("gateway.policy", "gateway.config", "aiohttp")))
assert not held, held
"""


def test_the_workers_parent_never_imports_the_policy(example: Path) -> None:
    """The parent of ``serve --workers N`` stays small whatever the rule count: the policy lives in the workers."""
    use_redis(example)
    result = subprocess.run([sys.executable, "-c", WORKERS_PARENT, str(example)], capture_output=True, text=True,
                            cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


SLOW_VALIDATION = """
import sys
import gateway.workers

gateway.workers.validation_command = lambda config: [sys.executable, "-c", "import time; time.sleep(60)"]
gateway.workers.run_workers = lambda config, **options: sys.exit("workers started after a SIGTERM")
from gateway.cli import main

sys.exit(main(["serve", "-c", sys.argv[1], "--workers", "2"]))
"""


def test_sigterm_while_the_workers_parent_validates_stops_the_check_and_exits_0(example: Path) -> None:
    """Validating 100,000 rules takes seconds; a SIGTERM then must not kill the parent and orphan its child."""
    parent = subprocess.Popen([sys.executable, "-c", SLOW_VALIDATION, str(example)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        children: list[str] = []
        while not children:  # the validating child has started
            assert time.monotonic() < deadline, "no validation child"
            time.sleep(0.05)
            with open(f"/proc/{parent.pid}/task/{parent.pid}/children") as listing:
                children = listing.read().split()
        parent.send_signal(signal.SIGTERM)
        _, stderr = parent.communicate(timeout=10)
        assert parent.returncode == 0, stderr
        assert not Path(f"/proc/{children[0]}").exists(), "the validation child was left running"
    finally:
        if parent.poll() is None:
            parent.kill()


SERVE_AND_RELOAD = """
import socket, sys, weakref
from pathlib import Path
import yaml
from gateway import server
from gateway.cli import main

async def reload_once(self):  # in place of serving until SIGTERM: one reload after an edit, then stop
    started_with = weakref.ref(self.config.policy)
    rules = self.config_path.parent / "rules.yaml"
    rules.write_text(rules.read_text() + "# edited\\n")
    assert await self.reload("test")
    print("start-up policy:", "kept" if started_with() is not None else "freed")
    await self.shutdown()
    return 0
server.Server.serve_until_stopped = reload_once

config, command = Path(sys.argv[1]), sys.argv[2]
with socket.socket() as probe:  # a free port for the demo's CRM
    probe.bind(("127.0.0.1", 0))
    crm_port = probe.getsockname()[1]
data = yaml.safe_load(config.read_text())
data["listen"] = {"host": "127.0.0.1", "port": 0}
data["upstream"]["url"] = f"http://127.0.0.1:{crm_port}"
config.write_text(yaml.safe_dump(data))
if command == "serve":
    sys.exit(main(["serve", "-c", str(config)]))
sys.exit(main(["demo", "--config-dir", str(config.parent), "--port", "0"]))
"""


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_reload_frees_the_policy_the_gateway_started_with(example: Path, command: str) -> None:
    """Through the real command line: nothing on the way (a local of ``serve``) keeps the start-up config,
    which after one reload would stay in memory for good (~90 MiB at 100,000 rules)."""
    result = subprocess.run([sys.executable, "-c", SERVE_AND_RELOAD, str(example), command], capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "start-up policy: freed" in result.stdout, result.stdout + result.stderr


def test_the_demo_removes_its_scratch_copy_with_the_key_and_secrets_when_it_stops(example: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SERVE_AND_RELOAD, str(example), "demo"], capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    scratch = Path(re.search(r"config:\s+(\S+)gateway\.yaml", result.stderr)[1])  # type: ignore[index]
    assert scratch.name.startswith("crm-gateway-demo-")
    assert not scratch.exists()


@pytest.mark.parametrize("command", ["check", "serve"])
@pytest.mark.parametrize("where", ["file", "env"])
def test_a_malformed_session_key_is_one_line_and_exit_1(example: Path, command: str, where: str) -> None:
    """Not a traceback at start, and `check` says so before `serve` would."""
    env = {**os.environ}
    env.pop("CRMGW_SECRET_KEY", None)
    if where == "file":
        (example.parent / "secret.key").write_text("not base64 at all!\n")
    else:
        env["CRMGW_SECRET_KEY"] = "c2hvcnQ="  # urlsafe-base64 of 5 bytes
    result = subprocess.run([sys.executable, "-m", "gateway", command, "-c", str(example)], capture_output=True,
                            text=True, cwd=REPO, timeout=60, check=False, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    expected = "secret.key: session key is not urlsafe-base64" if where == "file" else (
        "CRMGW_SECRET_KEY: session key must be 32 bytes, got 5")
    assert result.stderr.strip().endswith(expected), result.stderr
    assert "c2hvcnQ" not in result.stderr
