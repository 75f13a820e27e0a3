"""The main config file: defaults, and every mistake reported as file:line: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.schema import parse_duration
from gateway.settings import load_settings
from gateway.yamlsrc import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_only_upstream_url_is_required_and_the_rest_defaults_to_the_contract(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "upstream: {url: http://crm.internal:8000}\n"))
    assert settings.upstream.url == "http://crm.internal:8000"
    assert (settings.listen.host, settings.listen.port) == ("0.0.0.0", 8080)
    assert (settings.upstream.connect_timeout, settings.upstream.read_timeout) == (5.0, 60.0)
    assert settings.upstream.preserve_host is True
    assert settings.client_ip.trusted_proxies == () and settings.client_ip.header == "x-forwarded-for"
    assert (settings.mode, settings.default_action) == ("enforce", "allow")
    assert settings.session.store == "cookie" and settings.session.cookie_name == "crmgw_session"
    assert (settings.session.idle_timeout, settings.session.max_age) == (1800.0, 43200.0)
    assert settings.session.secret_key_file == tmp_path / "secret.key"  # relative to the main file
    assert settings.login is None and settings.totp is None and settings.geoip_database is None
    assert [str(n) for n in settings.metrics.allow] == ["127.0.0.1/32", "::1/128"]
    assert settings.policy_files == ()


def test_policy_files_and_paths_are_relative_to_the_main_file(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, (
        "upstream: {url: http://crm:8000}\npolicy_files: [rules.yaml, sub/people.yaml]\n"
        "totp: {secrets_file: totp.yaml}\n"
    )))
    assert settings.policy_files == (tmp_path / "rules.yaml", tmp_path / "sub" / "people.yaml")
    assert settings.totp is not None and settings.totp.secrets_file == tmp_path / "totp.yaml"


CASES = [
    ("missing upstream", "listen: {port: 80}\n", 1, "upstream.url is required"),
    ("unknown top-level key", "upstream: {url: http://a:1}\nlisten_port: 80\n", 2, "unknown key 'listen_port'"),
    ("unknown nested key", "upstream:\n  url: http://a:1\n  timeout: 3\n", 3, "upstream: unknown key 'timeout'"),
    ("wrong type", "upstream: {url: http://a:1}\nlisten:\n  port: eighty\n", 3, "listen.port: expected an integer"),
    ("bool is not an int", "upstream: {url: http://a:1}\nlisten:\n  port: true\n", 3, "listen.port: expected"),
    ("bad url scheme", "upstream:\n  url: ftp://crm\n", 2, "upstream.url: expected http(s)://"),
    ("credentials in the url (never sent; logged at start)", "upstream:\n  url: http://svc:S3cret@crm:80\n", 2,
     "upstream.url: credentials ('@') in the URL are not supported"),
    ("a bad url's password not echoed", "upstream:\n  url: htp://svc:S3cret@crm\n", 2,
     "upstream.url: credentials ('@') in the URL are not supported"),
    ("a password with a '/' (urlsplit ends the host there)", "upstream:\n  url: http://admin:pa/ss@crm:80\n", 2,
     "upstream.url: credentials ('@') in the URL are not supported"),
    ("a port that is not a number", "upstream:\n  url: http://crm:80x\n", 2, "upstream.url: expected http(s)://"),
    ("bad CIDR", "upstream: {url: http://a:1}\nclient_ip:\n  trusted_proxies:\n    - 10.0.0.0/8\n"
                 "    - 10.0.0.300/32\n", 5, "not an IP address or CIDR: '10.0.0.300/32'"),
    ("bad header", "upstream: {url: http://a:1}\nclient_ip:\n  header: x-client\n", 3,
     "client_ip.header: expected one of x-forwarded-for, forwarded, x-real-ip"),
    ("bad duration", "upstream: {url: http://a:1}\nsession:\n  idle_timeout: 30 minutes\n", 3,
     "session.idle_timeout: expected a duration like 30s, 15m, 12h or 7d"),
    ("bad mode", "upstream: {url: http://a:1}\nmode: audit\n", 2, "mode: expected one of enforce, report-only"),
    ("bad store", "upstream: {url: http://a:1}\nsession: {store: memcached}\n", 2, "session.store"),
    ("bad status", "upstream: {url: http://a:1}\nlogin:\n  success:\n    status: [302, 999]\n", 4,
     "login.success.status: expected an HTTP status code"),
    ("duplicate key", "upstream: {url: http://a:1}\nmode: enforce\nmode: report-only\n", 3, "duplicate key 'mode'"),
    ("yaml syntax", "upstream: {url: http://a:1\nmode: enforce\n", 2, "expected ',' or '}'"),
    ("tls half set", "upstream: {url: http://a:1}\nlisten:\n  tls: {cert: a.pem}\n", 3, "needs both cert and key"),
    ("not a mapping", "- upstream\n", 1, "expected a mapping"),
]


@pytest.mark.parametrize(("text", "line", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_config_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    reported = [str(problem) for problem in caught.value.problems]
    assert any(entry.startswith(f"{path}:{line}: ") and message in entry for entry in reported), reported


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "upstream: {url: http://a:1}\nmode: audit\nlisten: {port: x}\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert sorted(p.where.line for p in caught.value.problems) == [2, 3, 4]


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("12h", 43200), ("7d", 604800), (45, 45), ("1.5h", 5400), ("90", 90)],
    ids=["seconds", "minutes", "hours", "days", "bare-int", "fraction", "bare-string"],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["30 minutes", "-5s", "5w", True, "", None], ids=str)
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)
