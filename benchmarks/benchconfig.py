"""The gateway's benchmark configuration: the example policy, generated rules, a fixed key, session cookies.

The policy is the demo's (config/rules.yaml, config/people.yaml) with three
changes a benchmark needs: ``require_2fa: false`` (wrk cannot type codes), login
hours widened to every day but one minute (03:00-03:01 Europe/London: results
must not depend on the hour the benchmark runs, yet the per-request login-hours
check still runs) and ``logging.level: warning``. ``generated.yaml`` appends N
rules (1,000 for run.py, 100,000 for reload.py) that never match the benchmark's
client (jim at 127.0.0.1) but do sit in the index the decision walks: ban lists,
partner networks, per-user and per-group function rules, IPv6 blocks, a second
priority tier.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from services import REPO

SECRET = base64.urlsafe_b64encode(hashlib.sha256(b"crm-gateway benchmark key").digest()).decode()
BENCH_CRM_COOKIE = "benchmark-crm-session"  # the crm_session value bound to minted sessions
USER = "jim"
PASSWORD = "demo"
GENERATED_FUNCTIONS = 50


def example_policy() -> tuple[dict[str, Any], dict[str, Any]]:
    rules = yaml.safe_load((REPO / "config" / "rules.yaml").read_text())
    people = yaml.safe_load((REPO / "config" / "people.yaml").read_text())
    rules["defaults"]["require_2fa"] = False
    rules["defaults"]["login_hours"] = {"timezone": "Europe/London", "days": "mon-sun", "from": "03:01", "to": "03:00"}
    return rules, people


def generated_policy(count: int, seed: int = 6) -> dict[str, Any]:
    """``count`` rules that never match 127.0.0.1/jim, in realistic shapes, deterministic for a seed."""
    rnd = random.Random(seed)
    users = [f"gen-user-{i:05d}" for i in range(max(10, count // 10))]
    groups = {f"gen-group-{g:04d}": users[g * 10:(g + 1) * 10] for g in range(len(users) // 10)}
    group_names = list(groups)
    functions = {f"gen-fn-{k:03d}": {"paths": [f"/module-{k:03d}/**"]} for k in range(GENERATED_FUNCTIONS)}
    function_names = [*functions, "billing", "export", "bulk-delete", "timesheets"]
    rules: list[dict[str, Any]] = []
    for i in range(count):
        kind = i % 20
        rule: dict[str, Any] = {"id": f"gen-{i:06d}", "title": f"Generated rule {i}"}
        if kind < 8:  # 40%: ban list of single addresses
            address = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            rule.update(action="block", networks=[address], reason="ban list")
        elif kind < 12:  # 20%: partner networks for a group
            rule.update(action="allow", networks=[f"172.{rnd.randrange(16, 32)}.{rnd.randrange(256)}.0/24"],
                        groups=[rnd.choice(group_names)])
        elif kind < 15:  # 15%: per-user function blocks
            rule.update(action="block", function=rnd.choice(function_names), users=[rnd.choice(users)])
        elif kind < 17:  # 10%: a group may use a function from a site (an address range)
            base = rnd.randrange(256)
            rule.update(action="allow", function=rnd.choice(function_names[:GENERATED_FUNCTIONS]),
                        groups=[rnd.choice([*group_names, "warehouse", "sales"])],
                        networks=[f"198.18.{base}.10-198.18.{base}.20"])
        elif kind < 19:  # 10%: IPv6 blocks
            rule.update(action="block", networks=[f"2001:db8:{rnd.randrange(65536):x}:{rnd.randrange(65536):x}::/64"])
        else:  # 5%: a higher-priority tier, expiring
            rule.update(action="block", priority=10, networks=[f"203.0.113.{rnd.randrange(256)}"],
                        expires="2099-12-31", reason="incident")
        rules.append(rule)
    return {"functions": functions, "groups": groups, "rules": rules}


def write_config(directory: Path, *, port: int, upstream_port: int, rules: int, level: str = "warning",
                 redis_url: str | None = None) -> Path:
    """gateway.yaml + rules.yaml + people.yaml + generated.yaml + secret.key in ``directory``.

    Sessions in the encrypted cookie (the default), or in Redis at ``redis_url`` (what
    ``--workers N`` needs: the cookie store keeps its codes, counters and logouts per process).
    """
    directory.mkdir(parents=True, exist_ok=True)
    example_rules, people = example_policy()
    (directory / "rules.yaml").write_text(yaml.safe_dump(example_rules, sort_keys=False))
    (directory / "people.yaml").write_text(yaml.safe_dump(people, sort_keys=False))
    (directory / "generated.yaml").write_text(yaml.safe_dump(generated_policy(rules), sort_keys=False))
    key = directory / "secret.key"
    key.write_text(SECRET + "\n")
    key.chmod(0o600)
    main = {
        "listen": {"host": "127.0.0.1", "port": port},
        "upstream": {"url": f"http://127.0.0.1:{upstream_port}", "connect_timeout": 5, "read_timeout": 60},
        "session": {"store": "cookie", "secret_key_file": "secret.key", "cookie_secure": False}
        | ({"store": "redis", "redis_url": redis_url} if redis_url else {}),
        "login": {
            "path": "/login",
            "method": "POST",
            "username_field": "username",
            "success": {"status": [302, 303], "set_cookie": "crm_session"},
            "logout_paths": ["/logout"],
            "upstream_session_cookie": "crm_session",
        },
        "logging": {"format": "json", "level": level, "log_allowed": False},
        "policy_files": ["rules.yaml", "people.yaml", "generated.yaml"],
    }
    path = directory / "gateway.yaml"
    path.write_text(yaml.safe_dump(main, sort_keys=False))
    return path


def allowed_networks() -> list[str]:
    """The example policy's allowed_networks: nginx's allow list must be the same."""
    rules, _ = example_policy()
    return [str(n) for n in rules["defaults"]["allowed_networks"]]


async def login_cookie(port: int) -> str:
    """Log in through the gateway to the demo CRM as jim from 127.0.0.1: the Cookie header to reuse."""
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.1", 0))
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as client:
        async with client.post(f"http://127.0.0.1:{port}/login", data={"username": USER, "password": PASSWORD},
                               allow_redirects=False) as resp:
            await resp.read()
            if resp.status not in (302, 303):
                raise RuntimeError(f"login through the gateway answered {resp.status}")
            cookies = {name: morsel.value for name, morsel in resp.cookies.items()}
    missing = {"crmgw_session", "crm_session"} - set(cookies)
    if missing:
        raise RuntimeError(f"login did not set {sorted(missing)}")
    return f"crmgw_session={cookies['crmgw_session']}; crm_session={cookies['crm_session']}"


def _session_store(config: Path) -> Any:
    """The gateway's SessionStore for this config (main file only: 100,000 rules need not be loaded).

    Made anew for each mint, inside its event loop: a Redis client belongs to the loop it first ran in.
    """
    from gateway.sessions import SessionStore
    from gateway.settings import parse_settings
    from gateway.state import MemoryState
    from gateway.yamlsrc import Problems, load_yaml

    path = config.absolute()
    problems = Problems()
    settings = parse_settings(load_yaml(path), path, problems)
    problems.raise_if_any()
    return SessionStore(settings.session, MemoryState())


def minted_cookie(config: Path) -> str:
    """A session for jim minted with the gateway's own SessionStore and the bench key (no CRM to log in to).

    It carries what a real login records: a fresh ``sid``, ``login_at``/``seen`` now,
    and the fingerprint of the ``crm_session`` value sent alongside, so the
    identity filter keeps that CRM cookie as bound.
    """
    from aiohttp import web

    from gateway.sessions import fingerprint

    async def mint() -> tuple[str, str]:
        store = _session_store(config)
        session = await store.storage.new_session()
        now = time.time()
        session.update({"sid": os.urandom(16).hex(), "user": USER, "login_at": now, "seen": now,
                        "crm": fingerprint(BENCH_CRM_COOKIE), "mfa": False})
        response = web.Response()
        try:
            await store.save(None, response, session)  # neither storage looks at the request
        finally:
            if (client := getattr(store.storage, "_redis", None)) is not None:
                await client.aclose()
        return store.cookie_name, response.cookies[store.cookie_name].value

    name, value = asyncio.run(mint())
    return f"{name}={value}; crm_session={BENCH_CRM_COOKIE}"
