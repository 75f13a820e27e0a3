"""The main config file (DESIGN.md §2), parsed once into frozen, typed settings.

Only ``upstream.url`` is required; every other key defaults to the value the
contract shows. Relative paths are resolved against the main file's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.schema import IPNetwork, Section, parse_network
from gateway.yamlsrc import ConfigError, Problem, Problems, Where, load_yaml

CLIENT_IP_HEADERS = ("x-forwarded-for", "forwarded", "x-real-ip")


@dataclass(frozen=True, slots=True)
class Listen:
    host: str = "0.0.0.0"
    port: int = 8080
    tls_cert: Path | None = None
    tls_key: Path | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    preserve_host: bool = True
    # Idle pooled connections are dropped after this; keep it under the CRM's own keep-alive
    # timeout (Apache's default is 5 s), since a request is never sent twice (see proxy.py).
    keepalive: float = 4.0


@dataclass(frozen=True, slots=True)
class ClientIPSettings:
    trusted_proxies: tuple[IPNetwork, ...] = ()
    header: str = "x-forwarded-for"


@dataclass(frozen=True, slots=True)
class SessionSettings:
    store: str = "cookie"
    redis_url: str = "redis://127.0.0.1:6379/0"
    secret_key_file: Path = Path("secret.key")
    cookie_name: str = "crmgw_session"
    cookie_secure: bool = True
    idle_timeout: float = 30 * 60.0
    max_age: float = 12 * 3600.0


@dataclass(frozen=True, slots=True)
class LoginSettings:
    path: str = "/login"
    method: str = "POST"
    username_field: str = "username"
    success_status: tuple[int, ...] = (302, 303)
    success_set_cookie: str | None = "crm_session"
    logout_paths: tuple[str, ...] = ("/logout",)
    upstream_session_cookie: str = "crm_session"
    max_failures: int = 5
    find_time: float = 600.0
    ban_time: float = 900.0


@dataclass(frozen=True, slots=True)
class TotpSettings:
    issuer: str = "Example CRM"
    secrets_file: Path = Path("totp-secrets.yaml")
    max_failures: int = 5


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    format: str = "json"
    level: str = "info"
    log_allowed: bool = False


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    allow: tuple[IPNetwork, ...] = field(default_factory=lambda: (parse_network("127.0.0.1"), parse_network("::1")))


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything in the main file except the policy files' contents."""

    path: Path
    upstream: Upstream
    listen: Listen = Listen()
    client_ip: ClientIPSettings = ClientIPSettings()
    mode: str = "enforce"
    default_action: str = "allow"
    case_insensitive_paths: bool = False
    session: SessionSettings = SessionSettings()
    login: LoginSettings | None = None
    totp: TotpSettings | None = None
    geoip_database: Path | None = None
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    policy_files: tuple[Path, ...] = ()

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _path(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def parse_settings(data: Any, path: Path, problems: Problems) -> Settings:
    """Turn the main file's YAML into Settings, recording every problem."""
    name = str(path)
    base = path.parent
    top = Section(
        data,
        problems,
        name="",
        allowed=[
            "listen",
            "upstream",
            "client_ip",
            "mode",
            "default_action",
            "paths",
            "session",
            "login",
            "totp",
            "geoip",
            "logging",
            "metrics",
            "policy_files",
        ],
        where=Where(name, 1),
    )

    listen_s = top.section("listen", allowed=("host", "port", "tls"))
    tls_s = listen_s.section("tls", allowed=("cert", "key"))
    listen = Listen(
        host=listen_s.str("host", "0.0.0.0"),
        port=listen_s.int("port", 8080, minimum=0),
        tls_cert=_path(base, tls_s.str("cert", None)),
        tls_key=_path(base, tls_s.str("key", None)),
    )
    if (listen.tls_cert is None) != (listen.tls_key is None):
        problems.add(listen_s.where("tls"), "listen.tls: needs both cert and key")

    up_s = top.section("upstream", allowed=("url", "connect_timeout", "read_timeout", "preserve_host", "keepalive"))
    url = up_s.str("url", "")
    if not url:
        problems.add(top.where("upstream"), "upstream.url is required")
    else:
        if "@" in url:
            # Credentials (never sent: the CRM's own login is the only login, and the URL is logged at
            # start). Anywhere: a password holding '/', '?' or '#' ends urlsplit's netloc before the '@'.
            problems.add(up_s.where("url"), "upstream.url: credentials ('@') in the URL are not supported")
        else:
            try:
                parts = urlsplit(url)
                usable = parts.scheme in ("http", "https") and bool(parts.hostname)
                _ = parts.port  # raises for a port that is not a number
            except ValueError:  # e.g. an unclosed '[' ("Invalid IPv6 URL"), a port 'pa'
                usable = False
            if not usable:
                problems.add(up_s.where("url"), f"upstream.url: expected http(s)://host[:port], got {url!r}")
    upstream = Upstream(
        url=url.rstrip("/"),
        connect_timeout=up_s.number("connect_timeout", 5.0),
        read_timeout=up_s.number("read_timeout", 60.0),
        preserve_host=up_s.bool("preserve_host", True),
        keepalive=up_s.duration("keepalive", 4.0),
    )

    ip_s = top.section("client_ip", allowed=("trusted_proxies", "header"))
    client_ip = ClientIPSettings(
        trusted_proxies=ip_s.networks("trusted_proxies"),
        header=ip_s.choice("header", "x-forwarded-for", CLIENT_IP_HEADERS),
    )

    paths_s = top.section("paths", allowed=("case_insensitive",))

    sess_s = top.section(
        "session",
        allowed=(["store", "redis_url", "secret_key_file", "cookie_name", "cookie_secure", "idle_timeout", "max_age"]),
    )
    session = SessionSettings(
        store=sess_s.choice("store", "cookie", ("cookie", "redis")),
        redis_url=sess_s.str("redis_url", "redis://127.0.0.1:6379/0"),
        secret_key_file=_path(base, sess_s.str("secret_key_file", "secret.key")) or base / "secret.key",
        cookie_name=sess_s.str("cookie_name", "crmgw_session"),
        cookie_secure=sess_s.bool("cookie_secure", True),
        idle_timeout=sess_s.duration("idle_timeout", 1800.0),
        max_age=sess_s.duration("max_age", 43200.0),
    )

    login = None
    if top.has("login"):
        login_s = top.section(
            "login",
            allowed=[
                "path",
                "method",
                "username_field",
                "success",
                "logout_paths",
                "upstream_session_cookie",
                "max_failures",
                "find_time",
                "ban_time",
            ],
        )
        success_s = login_s.section("success", allowed=("status", "set_cookie"))
        statuses: list[int] = []
        for item, where in success_s.list("status"):
            if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
                statuses.append(item)
            else:
                problems.add(where, f"login.success.status: expected an HTTP status code, got {item!r}")
        login = LoginSettings(
            path=login_s.str("path", "/login"),
            method=login_s.str("method", "POST").upper(),
            username_field=login_s.str("username_field", "username"),
            success_status=tuple(statuses) if success_s.has("status") else (302, 303),
            success_set_cookie=success_s.str("set_cookie", None) if success_s.data else "crm_session",
            logout_paths=login_s.str_list("logout_paths", ("/logout",)),
            upstream_session_cookie=login_s.str("upstream_session_cookie", "crm_session"),
            max_failures=login_s.int("max_failures", 5, minimum=1),
            find_time=login_s.duration("find_time", 600.0),
            ban_time=login_s.duration("ban_time", 900.0),
        )

    totp = None
    if top.has("totp"):
        totp_s = top.section("totp", allowed=("issuer", "secrets_file", "max_failures"))
        totp = TotpSettings(
            issuer=totp_s.str("issuer", "Example CRM"),
            secrets_file=_path(base, totp_s.str("secrets_file", "totp-secrets.yaml")) or base / "totp-secrets.yaml",
            max_failures=totp_s.int("max_failures", 5, minimum=1),
        )

    geoip_database = None
    if top.has("geoip"):
        geo_s = top.section("geoip", allowed=("database",))
        geoip_database = _path(base, geo_s.str("database", None))
        if geoip_database is None:
            problems.add(top.where("geoip"), "geoip.database is required when geoip is set")

    log_s = top.section("logging", allowed=("format", "level", "log_allowed"))
    logging = LoggingSettings(
        format=log_s.choice("format", "json", ("json", "console")),
        level=log_s.choice("level", "info", ("debug", "info", "warning", "error")),
        log_allowed=log_s.bool("log_allowed", False),
    )

    metrics_s = top.section("metrics", allowed=("allow",))
    metrics = MetricsSettings(allow=metrics_s.networks("allow")) if metrics_s.has("allow") else MetricsSettings()

    policy_files = tuple(p for p in (_path(base, f) for f in top.str_list("policy_files")) if p is not None)

    return Settings(
        path=path,
        listen=listen,
        upstream=upstream,
        client_ip=client_ip,
        mode=top.choice("mode", "enforce", ("enforce", "report-only")),
        default_action=top.choice("default_action", "allow", ("allow", "block")),
        case_insensitive_paths=paths_s.bool("case_insensitive", False),
        session=session,
        login=login,
        totp=totp,
        geoip_database=geoip_database,
        logging=logging,
        metrics=metrics,
        policy_files=policy_files,
    )


def load_settings(path: Path) -> Settings:
    """Load and validate the main file alone; raises ConfigError listing every problem."""
    data = load_yaml(path)
    problems = Problems()
    if data is not None and not isinstance(data, dict):
        raise ConfigError([Problem(Where(str(path), 1), "expected a mapping at the top of the file")])
    settings = parse_settings(data, path, problems)
    problems.raise_if_any()
    return settings


def unshared_state(settings: Settings, *, workers: int) -> str | None:
    """Why ``workers`` processes cannot run on these settings, or None.

    With the cookie store each process keeps the state DESIGN.md §4 says must be
    shared in its own memory: a TOTP code would be accepted once per worker, a
    logged-out cookie would still work on the others, and every lock-out and login
    ban would allow ``workers`` times the guesses. Without a ``login`` section there
    are no sessions and nothing to share.
    """
    if workers > 1 and settings.session.store == "cookie" and settings.login is not None:
        return (f"{settings.path}: session.store is 'cookie' with {workers} workers: each would keep its own "
                "used TOTP codes, failure counters, bans and logouts (a code accepted once per worker, "
                f"{workers} times the guesses, a logged-out cookie still valid on another worker); "
                "set session.store: redis, or run one worker")
    return None
