"""The deployment files agree with the gateway they deploy (Dockerfile, deploy/, docs).

No container engine or cluster runs here, so what can be checked without one is:
every manifest parses; ports, paths, names and timeouts agree with the gateway's
own config, command line and endpoints; the configs shipped in the manifests pass
``crm-gateway check``; the probe and health-check commands really answer on a
running gateway; the nginx fronts really make the gateway see the client's address;
the systemd hardening does not break Python; and the image's entry command runs
from a wheel built the way the Dockerfile builds it, in a fresh virtualenv.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

import gateway
from gateway import cli, demo_crm
from gateway.config import Config, load_config
from gateway.filters.endpoints import PREFIX
from gateway.sessions import KEY_ENV, load_secret_key
from gateway.settings import SessionSettings
from gateway.totp import SecretStore
from tests.e2e.harness import HOME, free_port, stack
from tests.support.certs import self_signed

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
COMPOSE_CONFIG = DEPLOY / "compose" / "gateway.yaml"
SYSTEMD_UNIT = DEPLOY / "systemd" / "crm-gateway.service"
NGINX_TLS = DEPLOY / "nginx" / "crm-gateway.conf"
NGINX_COMPOSE = DEPLOY / "compose" / "nginx.conf"

MOUNT = "/etc/crm-gateway"  # where the image expects its config (Dockerfile header, docs/deployment.md)
HEALTH = f"{PREFIX}/health"
READY = f"{PREFIX}/ready"
GATEWAY_PATHS = {HEALTH, READY}  # the endpoints a probe may use (gateway/filters/endpoints.py)

# A policy that allows everything: the e2e checks here are about the plumbing, not the rules.
OPEN_POLICY: dict[str, Any] = {"rules": []}


# --- small parsers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    line: int
    keyword: str
    value: str
    stage: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, else None (shell form)."""
        if not self.value.startswith("["):
            return None
        parsed = json.loads(self.value)
        assert isinstance(parsed, list) and all(isinstance(v, str) for v in parsed), self
        return parsed


def parse_dockerfile(text: str) -> list[Instruction]:
    """FROM/ARG/RUN/COPY/USER/HEALTHCHECK/ENTRYPOINT/CMD/...: keyword, value, line and stage."""
    out: list[Instruction] = []
    stage, pending, start = "", "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines, also inside a continuation (as Docker does)
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, value = (pending + line).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            named = re.search(r"\s+AS\s+(\S+)\s*$", value, re.IGNORECASE)
            stage = named.group(1) if named else f"stage{sum(i.keyword == 'FROM' for i in out)}"
        out.append(Instruction(start, keyword, value.strip(), stage))
    return out


def shell_commands(value: str) -> list[list[str]]:
    """A shell-form RUN's commands, split on `&&`, its --mount/--network flags left out."""
    tokens = shlex.split(value)
    while tokens and tokens[0].startswith("--"):
        tokens.pop(0)
    commands: list[list[str]] = [[]]
    for token in tokens:
        if token == "&&":
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit: section -> [(key, value)] in order (keys repeat: ExecReload, SystemCallFilter)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_command(value: str) -> list[str]:
    """An Exec*= line as argv, without its special prefixes (-, @, +, !, :)."""
    return shlex.split(value.lstrip("-@+!:"))


def systemd_seconds(value: str) -> float:
    """systemd time spans as used here: `45`, `45s`, `2min`, `1min 30s`."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def nginx_directives(text: str, name: str) -> list[str]:
    """The arguments of every `name ...;` directive, comments removed."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [m.strip() for m in re.findall(rf"(?m)^\s*{re.escape(name)}\s+([^;]*);", code)]


def nginx_upstream_servers(text: str) -> list[str]:
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    block = re.search(r"upstream\s+\S+\s*\{(.*?)\}", code, re.DOTALL)
    assert block, "no upstream block"
    return [m.split()[0] for m in re.findall(r"(?m)^\s*server\s+([^;]*);", block.group(1))]


def nginx_matching_settings(text: str) -> dict[str, Any]:
    """The gateway.yaml excerpt an nginx conf shows in its comment block ('Matching setting...')."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("# Matching setting"))
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line.startswith("#   "):
            block.append(line[1:])
        elif block:
            break
    data = yaml.safe_load(textwrap.dedent("\n".join(block)))
    assert isinstance(data, dict), block
    return data


def parse_gateway_args(argv: list[str]) -> argparse.Namespace:
    """The gateway's own argument parser: unknown flags or subcommands fail the test."""
    return cli.build_parser().parse_args(argv)


def k8s_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in k8s_documents(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in objects, f"{key} defined twice"
            objects[key] = doc
    return objects


def one(kind: str, objects: dict[tuple[str, str], dict[str, Any]], name: str | None = None) -> dict[str, Any]:
    found = [o for (k, n), o in objects.items() if k == kind and (name is None or n == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def gateway_deployment(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return one("Deployment", objects, "crm-gateway")


def gateway_container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = gateway_deployment(objects)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "gateway")


def write_configmap(objects: dict[tuple[str, str], dict[str, Any]], directory: Path) -> Path:
    """The ConfigMap's files written out as the pod sees them; returns the main file."""
    data = one("ConfigMap", objects, "crm-gateway-config")["data"]
    for name, text in data.items():
        (directory / name).write_text(text)
    return directory / "gateway.yaml"


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p.get("name") == port))


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def compose_config() -> Config:
    return load_config(COMPOSE_CONFIG)


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects()


@pytest.fixture
def k8s_config(objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> Config:
    return load_config(write_configmap(objects, tmp_path))


# --- the parsers themselves ----------------------------------------------------------------


def test_dockerfile_parser_joins_continuations_skips_comments_and_tracks_stages() -> None:
    text = textwrap.dedent("""\
        # syntax=docker/dockerfile:1
        ARG BASE=python:3.11-slim
        FROM ${BASE} AS build
        RUN a \\
            # a comment inside a continuation
            && b
        FROM ${BASE}
        CMD ["serve"]
        """)
    parsed = parse_dockerfile(text)
    assert [(i.keyword, i.stage, i.line) for i in parsed] == [
        ("ARG", "", 2), ("FROM", "build", 3), ("RUN", "build", 4), ("FROM", "stage1", 7), ("CMD", "stage1", 8)
    ]
    assert shell_commands(parsed[2].value) == [["a"], ["b"]]
    assert parsed[4].exec_form() == ["serve"] and parsed[2].exec_form() is None


# --- Dockerfile ----------------------------------------------------------------------------


def runtime(dockerfile: list[Instruction]) -> list[Instruction]:
    last_stage = dockerfile[-1].stage
    return [i for i in dockerfile if i.stage == last_stage]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {len(found)}"
    return found[0]


def test_dockerfile_builds_a_wheel_then_installs_it_alone_on_python_311_slim(dockerfile: list[Instruction]) -> None:
    args = dict(i.value.split("=", 1) for i in dockerfile if i.keyword == "ARG" and i.stage == "")
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], i.value.split()[0])
             for i in dockerfile if i.keyword == "FROM"]
    assert froms == ["python:3.11-slim", "python:3.11-slim"], "a build stage and a slim runtime stage"
    build = [i for i in dockerfile if i.stage == "build"]
    wheel = [c for i in build if i.keyword == "RUN" for c in shell_commands(i.value)
             if c[1:4] == ["-m", "pip", "wheel"]]
    assert len(wheel) == 1 and "--no-deps" in wheel[0], "the build stage makes exactly one wheel: this project's"
    installs = [c for i in runtime(dockerfile) if i.keyword == "RUN" for c in shell_commands(i.value) if "install" in c]
    pip_installs = [c for c in installs if c[1:4] == ["-m", "pip", "install"]]
    assert len(pip_installs) == 1, "one pip install in the runtime stage"
    assert [a for a in pip_installs[0] if not a.startswith("-")][-1].endswith(".whl"), "installs the wheel"
    assert not any("[" in a for a in pip_installs[0]), "no extras (the test extra stays out of the image)"
    flat = " ".join(" ".join(c) for c in installs)
    for tool in ("apt-get", "gcc", "build-essential", "pytest"):
        assert tool not in flat, f"runtime stage installs {tool}"


def test_dockerfile_runs_as_non_root_with_exec_form_entry_and_the_documented_config(
    dockerfile: list[Instruction],
) -> None:
    final = runtime(dockerfile)
    user = only(final, "USER").value.split(":")[0]
    assert user.isdigit() and int(user) == 10001, "numeric, non-root (Kubernetes runAsNonRoot checks a number)"
    assert only(final, "ENTRYPOINT").exec_form() == ["crm-gateway"]
    cmd = only(final, "CMD").exec_form()
    assert cmd is not None, "exec form, so SIGTERM reaches the gateway (no shell in between)"
    args = parse_gateway_args(cmd)
    assert args.func is cli.cmd_serve
    assert args.config == f"{MOUNT}/gateway.yaml"
    assert only(final, "STOPSIGNAL").value == "SIGTERM"
    assert "PYTHONUNBUFFERED=1" in only(final, "ENV").value.split()
    assert only(final, "EXPOSE").value == "8080"
    # The documented mount: the Dockerfile's own header and the deployment guide name it.
    assert f"{MOUNT}/" in (ROOT / "Dockerfile").read_text().split("\nARG", 1)[0]
    assert f"{MOUNT}/" in (ROOT / "docs" / "deployment.md").read_text()


def healthcheck_command(dockerfile: list[Instruction]) -> list[str]:
    value = only(runtime(dockerfile), "HEALTHCHECK").value
    _options, _, command = value.partition("CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_dockerfile_healthcheck_asks_the_exposed_port_for_health_with_python(dockerfile: list[Instruction]) -> None:
    argv = healthcheck_command(dockerfile)
    assert argv[0] == "python", "the slim image has no curl"
    urls = re.findall(r"https?://[^'\"]+", " ".join(argv))
    expose = only(runtime(dockerfile), "EXPOSE").value
    assert urls == [f"http://127.0.0.1:{expose}{HEALTH}"]


def test_dockerignore_keeps_secrets_and_the_repository_out_of_the_context() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".git", ".venv", "tests", "**/secret.key", "**/totp-secrets.yaml"):
        assert entry in ignored, entry
    # ... but never what the build stage copies.
    for copied in ("pyproject.toml", "README.md", "gateway"):
        assert copied not in ignored, copied


# --- probes and health checks against a running gateway -----------------------------------


async def test_every_probe_and_health_check_answers_on_a_running_gateway(
    tmp_path: Path, dockerfile: list[Instruction], objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    container = gateway_container(objects)
    probes = {kind: container[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    for kind, probe in probes.items():
        assert container_port(container, probe["port"]) == 8080, kind
        assert probe["path"] in GATEWAY_PATHS, kind
    assert probes["livenessProbe"]["path"] == HEALTH, "liveness: the process answers, nothing else"
    assert probes["readinessProbe"]["path"] == READY, "readiness: upstream and session store reachable"

    async with stack(tmp_path, policy=OPEN_POLICY) as s, aiohttp.ClientSession() as client:
        for path in {p["path"] for p in probes.values()}:
            async with client.get(s.url(path)) as resp:
                body = await resp.json()
                assert resp.status == 200, (path, body)
                assert body.get("status") == "ok" or body.get("ready") is True, (path, body)
        # The image's HEALTHCHECK, run as Docker would (only the port differs): 0 when up ...
        argv = [a.replace("127.0.0.1:8080", f"127.0.0.1:{s.port}") for a in healthcheck_command(dockerfile)]
        argv[0] = sys.executable
        proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
        assert await proc.wait() == 0
    # ... and not 0 once nothing answers there.
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.DEVNULL)
    assert await proc.wait() != 0


# --- Kubernetes ----------------------------------------------------------------------------


def test_kustomization_lists_exactly_the_manifests_and_every_document_has_a_kind() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    # The placeholder Secret is never applied with the rest: it would replace the real one.
    assert listed == present - {"secret.yaml"}
    kinds = {key[0] for key in k8s_objects()}
    assert kinds >= {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                     "HorizontalPodAutoscaler", "NetworkPolicy"}
    namespace = one("Namespace", k8s_objects())
    assert kustomization["namespace"] == namespace["metadata"]["name"]


def test_configmap_files_pass_check(objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    main = write_configmap(objects, tmp_path)
    assert cli.main(["check", "-c", str(main)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_deployment_runs_the_configmap_config_on_its_port(
    objects: dict[tuple[str, str], dict[str, Any]], k8s_config: Config
) -> None:
    deployment = gateway_deployment(objects)
    pod = deployment["spec"]["template"]["spec"]
    container = gateway_container(objects)
    args = parse_gateway_args(container["args"])
    assert args.func is cli.cmd_serve and args.config == f"{MOUNT}/gateway.yaml"
    assert args.workers == 1, "one process per pod: replicas scale, the HPA sees real load"
    assert [p["containerPort"] for p in container["ports"]] == [k8s_config.settings.listen.port]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_mount = next(m for m in mounts.values() if m["mountPath"] == MOUNT)
    assert config_mount.get("readOnly") is True
    assert "subPath" not in config_mount, "a subPath mount never sees ConfigMap updates: no reload"
    assert volumes[config_mount["name"]]["configMap"]["name"] == "crm-gateway-config"
    assert deployment["spec"]["replicas"] >= 2
    hpa = one("HorizontalPodAutoscaler", objects)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "crm-gateway"}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # With several replicas the state must be shared, and Redis must be the one deployed here.
    settings = k8s_config.settings
    assert settings.session.store == "redis"
    redis_service = one("Service", objects, "crm-gateway-redis")
    redis_url = re.match(r"redis://([^:/]+):(\d+)/", settings.session.redis_url)
    assert redis_url and redis_url.group(1) == "crm-gateway-redis"
    assert int(redis_url.group(2)) in [p["port"] for p in redis_service["spec"]["ports"]]
    assert settings.session.cookie_secure, "TLS ends at the Ingress: the cookie stays Secure"


def test_termination_grace_covers_the_prestop_sleep_and_the_drain(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    pod = gateway_deployment(objects)["spec"]["template"]["spec"]
    container = gateway_container(objects)
    drain = parse_gateway_args(container["args"]).drain_timeout
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0, "endpoints are removed before the drain starts"
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1]) + drain


def test_secret_holds_what_the_gateway_reads(
    objects: dict[tuple[str, str], dict[str, Any]], k8s_config: Config, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    secret = one("Secret", objects, "crm-gateway-secrets")
    totp = k8s_config.settings.totp
    assert totp is not None
    assert set(secret["stringData"]) == {KEY_ENV, totp.secrets_file.name}
    container = gateway_container(objects)
    env = {e["name"]: e for e in container["env"]}
    assert env[KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "crm-gateway-secrets", "key": KEY_ENV}
    pod = gateway_deployment(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_mounts = [m for m in container["volumeMounts"] if "secret" in volumes[m["name"]]]
    assert [m["mountPath"] for m in secret_mounts] == [str(totp.secrets_file.parent)]
    items = volumes[secret_mounts[0]["name"]]["secret"]["items"]
    assert [i["path"] for i in items] == [totp.secrets_file.name], "the key stays out of the file system"
    # The shipped TOTP file is a valid (empty) secrets file ...
    (tmp_path / "totp.yaml").write_text(secret["stringData"][totp.secrets_file.name])
    assert SecretStore(tmp_path / "totp.yaml").users() == frozenset()
    # ... and the placeholder key is refused, so a forgotten placeholder fails closed.
    monkeypatch.setenv(KEY_ENV, secret["stringData"][KEY_ENV])
    with pytest.raises(ValueError, match=KEY_ENV):
        load_secret_key(SessionSettings(secret_key_file=tmp_path / "unused.key"))


def test_pods_run_non_root_read_only_with_limits(
    objects: dict[tuple[str, str], dict[str, Any]], dockerfile: list[Instruction]
) -> None:
    image_uid = int(only(runtime(dockerfile), "USER").value.split(":")[0])
    for deployment in (o for (kind, _), o in objects.items() if kind == "Deployment"):
        name = deployment["metadata"]["name"]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
    assert gateway_deployment(objects)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == image_uid
    # Read-only root: the one scratch place (multi-worker metrics, temp files) is an emptyDir.
    pod = gateway_deployment(objects)["spec"]["template"]["spec"]
    tmp = next(m for m in gateway_container(objects)["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])


def test_services_pdb_ingress_and_network_policies_select_the_right_pods(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    gateway_labels = gateway_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    redis_labels = one("Deployment", objects, "crm-gateway-redis")["spec"]["template"]["metadata"]["labels"]
    service = one("Service", objects, "crm-gateway")
    assert labels_match(service["spec"]["selector"], gateway_labels)
    assert not labels_match(service["spec"]["selector"], redis_labels)
    target = service["spec"]["ports"][0]["targetPort"]
    assert container_port(gateway_container(objects), target) == 8080
    assert labels_match(one("Service", objects, "crm-gateway-redis")["spec"]["selector"], redis_labels)
    pdb = one("PodDisruptionBudget", objects)
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], gateway_labels)
    assert pdb["spec"]["minAvailable"] < gateway_deployment(objects)["spec"]["replicas"], "drains can proceed"
    ingress = one("Ingress", objects)
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "crm-gateway"
    assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    policies = {p["metadata"]["name"]: p["spec"] for (kind, _), p in objects.items() if kind == "NetworkPolicy"}
    assert labels_match(policies["crm-gateway"]["podSelector"]["matchLabels"], gateway_labels)
    redis_policy = policies["crm-gateway-redis"]
    assert labels_match(redis_policy["podSelector"]["matchLabels"], redis_labels)
    (only_from,) = redis_policy["ingress"][0]["from"]
    assert set(only_from) == {"podSelector"}, "only pods of this namespace, no namespaceSelector"
    assert labels_match(only_from["podSelector"]["matchLabels"], gateway_labels), "only the gateway reaches Redis"


def test_trusted_proxies_and_metrics_stay_inside_the_cluster(k8s_config: Config) -> None:
    settings = k8s_config.settings
    trusted = settings.client_ip.trusted_proxies
    assert trusted, "the ingress controller's pods are trusted"
    assert all(net.is_private and net.prefixlen >= 8 for net in trusted), "a private pod network, never a public range"
    # Prometheus scrapes pods from the pod network; nobody outside may read the metrics.
    assert all(net.is_private or net.is_loopback for net in settings.metrics.allow)


# --- docker compose ------------------------------------------------------------------------


def test_compose_config_passes_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "-c", str(COMPOSE_CONFIG)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_compose_services_ports_and_names_agree(compose: dict[str, Any], compose_config: Config) -> None:
    services = compose["services"]
    assert set(services) == {"front", "gateway-1", "gateway-2", "crm", "redis"}
    gateways = [name for name in services if name.startswith("gateway-")]
    settings = compose_config.settings
    for name in gateways:
        service = services[name]
        args = parse_gateway_args(service["command"])
        assert args.func is cli.cmd_serve and args.config == f"{MOUNT}/gateway.yaml", name
        assert f"./compose:{MOUNT}:ro" in service["volumes"], name
        assert systemd_seconds(service["stop_grace_period"]) > args.drain_timeout, name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
    # Two replicas sharing state through the compose Redis.
    assert settings.session.store == "redis"
    assert settings.session.redis_url == "redis://redis:6379/0"
    # The CRM service listens where upstream.url points.
    crm_command = services["crm"]["command"]
    crm_host, crm_port = re.match(r"http://([^:/]+):(\d+)$", settings.upstream.url).groups()  # type: ignore[union-attr]
    assert crm_host == "crm" and crm_command[crm_command.index("--port") + 1] == crm_port
    assert services["crm"]["entrypoint"] == ["python", "-m", "gateway.demo_crm"]
    assert crm_port in " ".join(services["crm"]["healthcheck"]["test"]), "probes the CRM's port, not 8080"
    # The front: publishes its nginx port, is pinned at the one address the gateways trust.
    front = services["front"]
    published = [p.split(":") for p in front["ports"]]
    assert [int(inner) for _outer, inner in published] == [int(nginx_directives(NGINX_COMPOSE.read_text(),
                                                                                "listen")[0])]
    front_ip = ipaddress.ip_address(front["networks"]["edge"]["ipv4_address"])
    edge = ipaddress.ip_network(compose["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    assert front_ip in edge
    assert list(settings.client_ip.trusted_proxies) == [ipaddress.ip_network(front_ip)]
    # nginx balances exactly the gateway replicas, on the port they listen on.
    assert sorted(nginx_upstream_servers(NGINX_COMPOSE.read_text())) == sorted(
        f"{name}:{settings.listen.port}" for name in gateways
    )
    # Networks: the front reaches the gateways; the CRM and Redis only through them.
    for name in gateways:
        assert set(services[name]["networks"]) == {"edge", "backend"}
    assert services["crm"]["networks"] == ["backend"] and services["redis"]["networks"] == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True


def test_compose_nginx_comment_shows_the_gateways_setting(compose_config: Config) -> None:
    shown = nginx_matching_settings(NGINX_COMPOSE.read_text())["client_ip"]
    trusted = [ipaddress.ip_network(str(n)) for n in shown["trusted_proxies"]]
    assert trusted == list(compose_config.settings.client_ip.trusted_proxies)
    assert shown["header"] == compose_config.settings.client_ip.header


# --- nginx fronts --------------------------------------------------------------------------


@pytest.mark.parametrize("conf", [NGINX_TLS, NGINX_COMPOSE], ids=["tls-front", "compose-front"])
def test_nginx_front_streams_upgrades_and_overwrites_the_forwarding_header(conf: Path) -> None:
    text = conf.read_text()
    assert nginx_directives(text, "proxy_request_buffering") == ["off"]
    assert nginx_directives(text, "proxy_buffering") == ["off"]
    assert nginx_directives(text, "proxy_http_version") == ["1.1"]
    headers = dict(h.split(None, 1) for h in nginx_directives(text, "proxy_set_header"))
    assert headers["X-Forwarded-For"] == "$remote_addr", "the edge replaces whatever the client claimed"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["Upgrade"] == "$http_upgrade" and headers["Connection"] == "$connection_upgrade"


def nginx_main_conf(directory: Path, site: str) -> Path:
    """A minimal nginx.conf around a site file, everything under ``directory``."""
    (directory / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                         "uwsgi", "scgi"))
    main = directory / "nginx.conf"
    main.write_text(f"pid {directory / 'nginx.pid'};\nerror_log stderr;\nevents {{}}\n"
                    f"http {{ access_log off; {temp} include {directory / 'site.conf'}; }}\n")
    return main


def nginx_test(main: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nginx", "-t", "-p", str(main.parent), "-c", str(main), "-e", "stderr"],
                          capture_output=True, text=True, timeout=20, check=False)


def test_compose_front_conf_is_valid_nginx(tmp_path: Path) -> None:
    # Docker's DNS names do not resolve here: point the upstream servers at loopback.
    site = re.sub(r"server gateway-\d+:", "server 127.0.0.1:", NGINX_COMPOSE.read_text())
    result = nginx_test(nginx_main_conf(tmp_path, site))
    assert result.returncode == 0, result.stderr


@contextlib.asynccontextmanager
async def running_nginx(main: Path, port: int) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        "nginx", "-p", str(main.parent), "-c", str(main), "-e", "stderr", "-g", "daemon off;",
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert proc.returncode is None and time.monotonic() < deadline, "nginx did not start"
                await asyncio.sleep(0.05)
            else:
                writer.close()
                break
        yield
    finally:
        proc.terminate()
        await proc.wait()


def tls_site(text: str, *, cert: Path, key: Path, gateway_port: int, http_port: int, tls_port: int) -> str:
    """The TLS front as shipped, but with a test certificate, free ports and IPv4 only."""
    (upstream,) = nginx_upstream_servers(text)
    site = (text.replace("/etc/ssl/crm-gateway/fullchain.pem", str(cert))
            .replace("/etc/ssl/crm-gateway/privkey.pem", str(key))
            .replace(f"server {upstream};", f"server 127.0.0.1:{gateway_port};"))
    site = re.sub(r"(?m)^\s*listen \[::\].*$", "", site)
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http_port};")
    return site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{tls_port} ssl http2;")


def test_tls_front_comment_matches_its_upstream() -> None:
    text = NGINX_TLS.read_text()
    shown = nginx_matching_settings(text)
    (upstream,) = nginx_upstream_servers(text)
    assert upstream == f"{shown['listen']['host']}:{shown['listen']['port']}", "listen is nginx's upstream"
    # nginx reaches the gateway over loopback from the same address it connects to.
    nginx_side = ipaddress.ip_address(shown["listen"]["host"])
    trusted = [ipaddress.ip_network(str(n)) for n in shown["client_ip"]["trusted_proxies"]]
    assert any(nginx_side in net for net in trusted), "nginx connects from a trusted address"
    assert shown["session"]["cookie_secure"] is True


async def test_tls_front_makes_the_gateway_see_the_client_and_passes_websockets(tmp_path: Path) -> None:
    text = NGINX_TLS.read_text()
    shown = nginx_matching_settings(text)
    cert, key = self_signed(tmp_path)
    http_port, tls_port = free_port(), free_port()
    # The gateway runs with the comment block's client_ip exactly; only the ports are free ones.
    async with stack(tmp_path / "gw", policy=OPEN_POLICY, client_ip=shown["client_ip"]) as s:
        main = nginx_main_conf(tmp_path, tls_site(text, cert=cert, key=key, gateway_port=s.port,
                                                  http_port=http_port, tls_port=tls_port))
        result = nginx_test(main)
        assert result.returncode == 0, result.stderr
        async with running_nginx(main, tls_port):
            base = f"https://127.0.0.1:{tls_port}"
            client = s.client(HOME)
            spoofed = {"X-Forwarded-For": "193.167.2.5"}  # an office address the client would like to have
            async with client.get(f"{base}{PREFIX}/whoami", headers=spoofed, ssl=False) as resp:
                whoami = await resp.json()
            assert whoami["client_ip"] == HOME, "the gateway sees the client, not nginx and not the claim"
            assert whoami["peer_ip"] == "127.0.0.1"
            async with client.get(f"{base}/echo/x", headers=spoofed, ssl=False) as resp:
                headers = {k.lower(): v for k, v in (await resp.json())["headers"]}
            assert headers["x-forwarded-for"] == HOME
            # Plain HTTP is redirected to HTTPS.
            async with client.get(f"http://127.0.0.1:{http_port}/x", allow_redirects=False) as resp:
                assert resp.status == 301 and resp.headers["Location"].startswith("https://")
            # WebSocket through nginx and the gateway to the CRM (its notifications need a CRM login).
            async with client.post(f"{base}/login", data={"username": "jim", "password": "demo"},
                                   allow_redirects=False, ssl=False) as resp:
                assert resp.status in (302, 303)
            async with client.ws_connect(f"wss://127.0.0.1:{tls_port}/ws/notifications", ssl=False) as ws:
                assert (await ws.receive(timeout=5)).data == "hello jim"
                await ws.send_str("through nginx")
                assert (await ws.receive(timeout=5)).data == "through nginx"


async def test_tls_front_scheme_reaches_the_crm(tmp_path: Path) -> None:
    text = NGINX_TLS.read_text()
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    async with stack(tmp_path / "gw", policy=OPEN_POLICY, client_ip=nginx_matching_settings(text)["client_ip"]) as s:
        main = nginx_main_conf(tmp_path, tls_site(text, cert=cert, key=key, gateway_port=s.port,
                                                  http_port=free_port(), tls_port=tls_port))
        async with running_nginx(main, tls_port), \
                s.client(HOME).get(f"https://127.0.0.1:{tls_port}/echo/x", ssl=False) as resp:
            headers = {k.lower(): v for k, v in (await resp.json())["headers"]}
    assert headers["x-forwarded-proto"] == "https"


# --- systemd -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return parse_unit(SYSTEMD_UNIT.read_text())


def test_systemd_unit_starts_checks_reloads_and_drains(unit: dict[str, list[tuple[str, str]]]) -> None:
    (start,) = unit_values(unit, "Service", "ExecStart")
    argv = unit_command(start)
    assert argv[0].endswith("/bin/crm-gateway")
    serve = parse_gateway_args(argv[1:])
    assert serve.func is cli.cmd_serve and serve.config.startswith(f"{MOUNT}/")
    for key in ("ExecStartPre", "ExecReload"):
        checks = [unit_command(v) for v in unit_values(unit, "Service", key) if "check" in v]
        assert checks, f"{key} validates the config first"
        for check in checks:
            parsed = parse_gateway_args(check[1:])
            assert parsed.func is cli.cmd_check and parsed.config == serve.config
    assert unit_command(unit_values(unit, "Service", "ExecReload")[-1]) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert unit_values(unit, "Service", "KillSignal") == ["SIGTERM"]
    assert unit_values(unit, "Service", "KillMode") == ["mixed"], "SIGTERM to the parent; it tells its workers"
    (timeout,) = unit_values(unit, "Service", "TimeoutStopSec")
    assert systemd_seconds(timeout) > serve.drain_timeout


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("UMask", "0077"),
    ],
    ids=lambda v: str(v) or "empty",
)
def test_systemd_unit_hardening(unit: dict[str, list[tuple[str, str]]], key: str, expected: str) -> None:
    assert unit_values(unit, "Service", key)[-1:] == [expected]


def test_systemd_unit_runs_as_its_own_user_and_writes_only_its_state(unit: dict[str, list[tuple[str, str]]]) -> None:
    (user,) = unit_values(unit, "Service", "User")
    assert user not in ("root", "0")
    sysusers = (DEPLOY / "systemd" / "crm-gateway.sysusers.conf").read_text()
    assert re.search(rf"(?m)^u {re.escape(user)} ", sysusers), "the user is created by sysusers.d"
    (state,) = unit_values(unit, "Service", "StateDirectory")
    assert unit_values(unit, "Service", "ReadWritePaths") == [f"/var/lib/{state}"]


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify insists that commands exist: point them at a binary that does.
    text = SYSTEMD_UNIT.read_text().replace("/opt/crm-gateway/bin/crm-gateway", shutil.which("true") or "/bin/true")
    (tmp_path / "crm-gateway.service").write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "crm-gateway.service")],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
MDWE_LAUNCHER = textwrap.dedent(f"""\
    import ctypes, os, sys
    if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
        sys.exit(77)  # kernel without PR_SET_MDWE (< 6.3)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
    """)


async def test_gateway_works_under_memory_deny_write_execute(tmp_path: Path) -> None:
    """The unit's MemoryDenyWriteExecute=yes, applied the way systemd does on Linux >= 6.3 (prctl)."""
    crm_runner, crm_port = await demo_crm.start("127.0.0.1", 0)
    cert, key = self_signed(tmp_path)
    port = free_port()
    main = {
        "listen": {"host": "127.0.0.1", "port": port, "tls": {"cert": str(cert), "key": str(key)}},
        "upstream": {"url": f"http://127.0.0.1:{crm_port}"},
        "session": {"store": "cookie", "secret_key_file": "secret.key"},  # Fernet: cryptography's code
        "login": {"path": "/login"},
        "logging": {"level": "warning"},
        "policy_files": ["policy.yaml"],
    }
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(OPEN_POLICY))
    (tmp_path / "gateway.yaml").write_text(yaml.safe_dump(main))
    log = (tmp_path / "gateway.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MDWE_LAUNCHER, "-m", "gateway", "serve", "-c", str(tmp_path / "gateway.yaml"),
        "--drain-timeout", "2", stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as client:
            deadline = time.monotonic() + 15
            while True:
                if proc.returncode is not None:
                    if proc.returncode == 77:
                        pytest.skip("kernel without PR_SET_MDWE")
                    raise AssertionError((tmp_path / "gateway.log").read_text())
                try:
                    async with client.get(f"https://127.0.0.1:{port}{HEALTH}", ssl=context) as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert time.monotonic() < deadline, (tmp_path / "gateway.log").read_text()
                    await asyncio.sleep(0.1)
            async with client.post(f"https://127.0.0.1:{port}/login", data={"username": "jim", "password": "demo"},
                                   allow_redirects=False, ssl=context) as resp:
                assert resp.status in (302, 303)
                assert "crmgw_session" in resp.cookies, "an encrypted gateway session cookie was made"
            async with client.get(f"https://127.0.0.1:{port}/echo/x", ssl=context) as resp:
                assert (await resp.json())["user"] == "jim"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
        await crm_runner.cleanup()


# --- the image's entry command from a wheel, in a fresh venv -------------------------------


def run(argv: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, f"{argv}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def built_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from exactly what the Dockerfile copies, with its command; install it alone in a venv."""
    instructions = parse_dockerfile((ROOT / "Dockerfile").read_text())
    work = tmp_path_factory.mktemp("image")
    context = work / "src"
    context.mkdir()
    build = [i for i in instructions if i.stage == "build"]
    for copy in (i for i in build if i.keyword == "COPY"):
        *sources, _dest = shlex.split(copy.value)
        for source in sources:
            origin = ROOT / source
            if origin.is_dir():
                shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(origin, context / source)
    (wheel_cmd,) = [c for i in build if i.keyword == "RUN" for c in shell_commands(i.value)
                    if c[1:4] == ["-m", "pip", "wheel"]]
    dist = work / "dist"
    argv = [sys.executable, *wheel_cmd[1:]]
    argv[argv.index("-w") + 1] = str(dist)
    run(argv, cwd=context)
    (wheel,) = dist.glob("*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    (install_cmd,) = [c for i in runtime(instructions) if i.keyword == "RUN" for c in shell_commands(i.value)
                      if c[1:4] == ["-m", "pip", "install"]]
    # As in the image, except that pip may reuse its cache here (the image keeps none).
    install = [str(venv / "bin" / "python"), *(a for a in install_cmd[1:] if a != "--no-cache-dir")]
    install[-1] = str(wheel)
    run(install, cwd=work, timeout=300)
    return venv


@pytest.mark.slow
def test_image_entry_command_runs_from_the_wheel_in_a_fresh_venv(built_venv: Path, tmp_path: Path) -> None:
    entry = built_venv / "bin" / "crm-gateway"  # the image's ENTRYPOINT, found on PATH there
    assert run([str(entry), "--version"], cwd=tmp_path).stdout.strip() == f"crm-gateway {gateway.__version__}"
    # The installed package is what runs, not this checkout.
    where = run([str(built_venv / "bin" / "python"), "-c", "import gateway; print(gateway.__file__)"], cwd=tmp_path)
    assert str(built_venv) in where.stdout
    checked = run([str(entry), "check", "-c", str(COMPOSE_CONFIG)], cwd=tmp_path)
    assert checked.stdout.startswith("ok: ")
    # The compose file's CRM service runs the demo CRM from the same image.
    run([str(built_venv / "bin" / "python"), "-m", "gateway.demo_crm", "--help"], cwd=tmp_path)
    # Only runtime dependencies: the test extra stayed out.
    installed = run([str(built_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(installed.stdout)}
    assert "aiohttp" in names and not names & {"pytest", "hypothesis", "mypy", "ruff", "playwright"}

