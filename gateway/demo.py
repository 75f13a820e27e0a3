"""``crm-gateway demo``: the bundled demo CRM with a real gateway in front, from config/ examples.

The example files are copied to a scratch folder first, so the demo's session
key and TOTP secrets never land in the source tree. The copy is what the
gateway watches: edit it (the path is printed) to see a reload happen.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import yaml
from yarl import URL

import gateway
from gateway import logs
from gateway.config import load_config
from gateway.yamlsrc import ConfigError

if TYPE_CHECKING:
    from gateway.server import Server


def find_config_dir(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [Path.cwd() / "config", Path(gateway.__file__).parent.parent / "config"]
    for candidate in candidates:
        if candidate is not None and (candidate / "gateway.yaml").is_file():
            return candidate
    raise SystemExit("demo: no config/gateway.yaml found; run from the repository or pass --config-dir")


def prepare(config_dir: Path, port: int) -> tuple[Path, int]:
    """Copy the examples to a scratch folder, pointing the gateway at --port; returns (main file, CRM port)."""
    scratch = Path(tempfile.mkdtemp(prefix="crm-gateway-demo-"))
    for item in config_dir.iterdir():
        if item.suffix in (".yaml", ".yml", ".md", ".mmdb"):
            shutil.copy2(item, scratch / item.name)
    main = scratch / "gateway.yaml"
    data: dict[str, Any] = yaml.safe_load(main.read_text(encoding="utf-8"))
    data.setdefault("listen", {})["port"] = port
    main.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    crm_port = URL(data["upstream"]["url"]).port or 80
    return main, crm_port


def run_demo(*, port: int, config_dir: Path | None) -> int:
    main, crm_port = prepare(find_config_dir(config_dir), port)
    try:
        return _demo(main, crm_port)
    finally:  # the scratch copy holds a session key and TOTP secrets
        shutil.rmtree(main.parent, ignore_errors=True)


def _demo(main: Path, crm_port: int) -> int:
    try:
        config = load_config(main)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    logs.configure(level=config.settings.logging.level, fmt=config.settings.logging.format)
    from gateway.server import Server, install_event_loop_policy
    from gateway.totp import enroll_demo_users

    install_event_loop_policy()
    enrolled = enroll_demo_users(config)
    notes = _hours_note(config)
    # Only the server holds the config from here: a reload then frees the one it started with.
    server = Server(config_path=main, config=config)
    del config
    return asyncio.run(_run(server, main, crm_port, enrolled, notes))


async def _run(server: Server, main: Path, crm_port: int, enrolled: dict[str, str], notes: list[str]) -> int:
    from gateway import demo_crm

    crm_runner, _ = await demo_crm.start("127.0.0.1", crm_port)
    await server.start()
    host = server.config.settings.listen.host
    banner = [
        "",
        "crm-gateway demo is running",
        f"  gateway:   http://{host}:{server.port}/   (open this in a browser)",
        f"  demo CRM:  http://127.0.0.1:{crm_port}/   (what sits behind it)",
        f"  config:    {main}   (edit it: the gateway reloads by itself; removed when the demo stops)",
        "  users:     jim, bob, alice, pat, maria, sam; password: demo",
        "  try a denial from 'outside the office':",
        f"    curl --interface 127.0.0.3 http://127.0.0.1:{server.port}/_gateway/whoami",
        f"    curl --interface 127.0.0.3 http://127.0.0.1:{server.port}/dashboard",
    ]
    if enrolled:
        banner.append("  2FA secrets for the demo users (add one to an authenticator app, or use oathtool):")
        banner.extend(f"    {user}: oathtool --totp -b {secret}" for user, secret in enrolled.items())
    banner.extend(notes)
    print("\n".join(banner), file=sys.stderr, flush=True)
    try:
        return await server.serve_until_stopped()
    finally:
        await crm_runner.cleanup()


def _hours_note(config: Any) -> list[str]:
    """Say so when the demo starts outside the office's login hours: logins will be refused."""
    now = datetime.now(UTC)
    settings = config.policy.settings_for(None, now)
    hours = settings.login_hours
    if hours is None or hours.contains(now, ZoneInfo(settings.timezone)):
        return []
    return [
        f"  note: it is outside the office's login hours ({hours.describe()}), so logins are denied",
        "        with outside_login_hours: the policy at work. To try everything now, change",
        f"        defaults.login_hours in {config.settings.policy_files[0]} (the gateway reloads by itself).",
    ]
