"""TOTP (DESIGN.md §4): the secrets file, enrolment and verification, at fixed clock values.

Codes come from pyotp (and once from the ``oathtool`` binary, an independent
RFC 6238 implementation) for a fixed secret at fixed times, so every case is
deterministic. Lock-outs run on injected clocks: the verifier's wall clock and
the MemoryState's monotonic clock move together.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyotp
import pytest
import yaml
from structlog.testing import capture_logs

import gateway.totp as totp_module
from gateway.settings import load_settings
from gateway.state import MemoryState, RedisState
from gateway.totp import (
    SecretsFileError,
    SecretStore,
    TotpVerifier,
    VerifyResult,
    enroll_command,
    enroll_demo_users,
    new_secret,
    provisioning_uri,
)
from tests.support.redis_server import RedisServer, redis_server_fixture

redis_server = redis_server_fixture(scope="module")

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
OTHER_SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
T0 = 1_700_000_010.0  # 10 s into a 30 s step
STEP = 30


def code_at(offset_steps: int, secret: str = SECRET, at: float = T0) -> str:
    return str(pyotp.TOTP(secret).at(at + offset_steps * STEP))


def wrong_code(at: float = T0) -> str:
    """A well-formed code that matches none of the three accepted steps."""
    accepted = {code_at(k, at=at) for k in (-1, 0, 1)}
    candidate = int(code_at(0, at=at))
    while f"{candidate:06d}" in accepted:
        candidate = (candidate + 1) % 1_000_000
    return f"{candidate:06d}"


class Clocks:
    """The verifier's wall clock and the store's monotonic clock, moved together."""

    def __init__(self) -> None:
        self.wall = T0
        self.mono = 5_000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@dataclass
class Rig:
    verifier: TotpVerifier
    state: MemoryState
    clocks: Clocks
    store: SecretStore


def write_secrets(path: Path, entries: dict[str, str], mode: int = 0o600) -> None:
    path.write_text(
        yaml.safe_dump({u: {"secret": s, "enrolled": "2026-01-05T09:00:00+00:00"} for u, s in entries.items()})
    )
    path.chmod(mode)


@pytest.fixture
def make_rig(tmp_path: Path) -> Callable[..., Rig]:
    def make(*, max_failures: int = 5, lock_seconds: float = 900, failure_window: float = 900) -> Rig:
        path = tmp_path / "secrets.yaml"
        write_secrets(path, {"jim": SECRET, "bob": SECRET, "alice": OTHER_SECRET})
        clocks = Clocks()
        state = MemoryState(clock=lambda: clocks.mono)
        store = SecretStore(path)
        verifier = TotpVerifier(
            store,
            state,
            max_failures=max_failures,
            lock_seconds=lock_seconds,
            failure_window=failure_window,
            clock=lambda: clocks.wall,
        )
        return Rig(verifier, state, clocks, store)

    return make


# --- one code, fresh state --------------------------------------------------------------------------

CODE_CASES: list[tuple[str, Callable[[], str], VerifyResult]] = [
    ("the current step's code is accepted", lambda: code_at(0), VerifyResult.OK),
    ("the previous step's code is accepted (clock drift)", lambda: code_at(-1), VerifyResult.OK),
    ("the next step's code is accepted (clock drift)", lambda: code_at(1), VerifyResult.OK),
    ("a code two steps old is rejected", lambda: code_at(-2), VerifyResult.INVALID),
    ("a code two steps ahead is rejected", lambda: code_at(2), VerifyResult.INVALID),
    ("a wrong code is rejected", wrong_code, VerifyResult.INVALID),
    ("spaces inside the code are ignored ('123 456')", lambda: code_at(0)[:3] + " " + code_at(0)[3:], VerifyResult.OK),
    ("surrounding whitespace is ignored", lambda: f"  {code_at(0)}\n", VerifyResult.OK),
    ("a non-digit is rejected", lambda: code_at(0)[:5] + "a", VerifyResult.INVALID),
    ("a short code is rejected", lambda: code_at(0)[:5], VerifyResult.INVALID),
    ("a long code is rejected, even one starting with the right six digits", lambda: code_at(0) + "0",
     VerifyResult.INVALID),
    ("an empty code is rejected", lambda: "", VerifyResult.INVALID),
    ("non-ASCII digits are rejected even when they spell the right code",
     lambda: code_at(0).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")), VerifyResult.INVALID),
    ("another user's secret's code is rejected", lambda: code_at(0, secret=OTHER_SECRET), VerifyResult.INVALID),
]


@pytest.mark.parametrize(("code", "expected"), [c[1:] for c in CODE_CASES], ids=[c[0] for c in CODE_CASES])
async def test_one_code(make_rig: Callable[..., Rig], code: Callable[[], str], expected: VerifyResult) -> None:
    rig = make_rig()
    assert await rig.verifier.verify("jim", code()) is expected
    failures = await rig.state.count("totp:fail:jim")
    assert failures == (0 if expected is VerifyResult.OK else 1), "failures are counted, successes are not"


async def test_user_without_secret_is_no_secret_and_not_a_failure(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    assert await rig.verifier.verify("pat", code_at(0)) is VerifyResult.NO_SECRET
    assert await rig.state.count("totp:fail:pat") == 0


async def test_code_from_oathtool_is_accepted(make_rig: Callable[..., Rig]) -> None:
    """An independent RFC 6238 implementation (oathtool) and ours agree."""
    binary = shutil.which("oathtool")
    if binary is None:
        pytest.fail("oathtool is not installed (apt-get install oathtool): this test needs the real binary")
    result = subprocess.run(
        [binary, "--totp", "-b", "--now", f"@{int(T0)}", SECRET], capture_output=True, text=True, check=True
    )
    code = result.stdout.strip()
    assert code == code_at(0)
    rig = make_rig()
    assert await rig.verifier.verify("jim", code) is VerifyResult.OK


# --- sequences: replay, lock-out, reset ---------------------------------------------------------------


@dataclass(frozen=True)
class Seq:
    description: str
    options: dict[str, Any]
    # (user, code maker, seconds to advance first, expected)
    steps: tuple[tuple[str, Callable[[float], str], float, VerifyResult], ...]


def now(k: int = 0) -> Callable[[float], str]:
    return lambda at: code_at(k, at=at)


def bad() -> Callable[[float], str]:
    return wrong_code


OK, INVALID, REPLAYED, LOCKED = VerifyResult.OK, VerifyResult.INVALID, VerifyResult.REPLAYED, VerifyResult.LOCKED

SEQUENCES = [
    Seq("a code is accepted once: the same code again is a replay", {},
        (("jim", now(), 0, OK), ("jim", now(), 0, REPLAYED))),
    Seq("a replay is refused even a step later, while the code is still in the window", {},
        (("jim", now(), 0, OK), ("jim", now(-1), STEP, REPLAYED))),
    Seq("the same code for another user with the same secret is fine (replay is per user)", {},
        (("jim", now(), 0, OK), ("bob", now(), 0, OK))),
    Seq("the previous step's code is still usable after the current one was used (another step)", {},
        (("jim", now(), 0, OK), ("jim", now(-1), 0, OK))),
    Seq("the next step's code is accepted once the clock reaches it", {},
        (("jim", now(), 0, OK), ("jim", now(), STEP, OK))),
    Seq("lock-out exactly at max_failures, and then even the right code is LOCKED", {"max_failures": 3},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED),
         ("jim", now(), 0, LOCKED))),
    Seq("max_failures 1 locks at the first failure", {"max_failures": 1},
        (("jim", bad(), 0, LOCKED),)),
    Seq("replays count as failures towards the lock-out", {"max_failures": 2},
        (("jim", now(), 0, OK), ("jim", now(), 0, REPLAYED), ("jim", now(), 0, LOCKED))),
    Seq("the lock holds until lock_seconds have passed", {"max_failures": 2, "lock_seconds": 600},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED), ("jim", now(), 599, LOCKED))),
    Seq("the lock expires by itself and the right code works again", {"max_failures": 2, "lock_seconds": 600},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED), ("jim", now(), 601, OK))),
    Seq("after a lock ends the user has max_failures fresh tries", {"max_failures": 2, "lock_seconds": 600,
                                                                    "failure_window": 3600},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED), ("jim", bad(), 601, INVALID),
         ("jim", bad(), 0, LOCKED))),
    Seq("success resets the failure count", {"max_failures": 3},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, INVALID), ("jim", now(), 0, OK),
         ("jim", bad(), 0, INVALID), ("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED))),
    Seq("failures older than the window do not add up", {"max_failures": 3, "failure_window": 900},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, INVALID), ("jim", bad(), 901, INVALID),
         ("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED))),
    Seq("a lock is per user: jim locked, bob and alice unaffected", {"max_failures": 2},
        (("jim", bad(), 0, INVALID), ("jim", bad(), 0, LOCKED), ("bob", now(), 0, OK),
         ("alice", lambda at: code_at(0, OTHER_SECRET, at), 0, OK))),
]


@pytest.mark.parametrize("seq", SEQUENCES, ids=[s.description for s in SEQUENCES])
async def test_sequence(make_rig: Callable[..., Rig], seq: Seq) -> None:
    rig = make_rig(**seq.options)
    for number, (user, make_code, advance, expected) in enumerate(seq.steps, 1):
        rig.clocks.advance(advance)
        result = await rig.verifier.verify(user, make_code(rig.clocks.wall))
        assert result is expected, f"step {number}: {user} got {result}, expected {expected}"


async def test_locked_for_reports_the_time_left(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_failures=1, lock_seconds=900)
    assert await rig.verifier.locked_for("jim") is None
    assert await rig.verifier.verify("jim", wrong_code()) is LOCKED
    assert await rig.verifier.locked_for("jim") == pytest.approx(900)
    rig.clocks.advance(300)
    assert await rig.verifier.locked_for("jim") == pytest.approx(600)
    assert await rig.verifier.locked_for("bob") is None


async def test_verifier_logs_failures_without_the_code(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(max_failures=2)
    code = wrong_code()
    with capture_logs() as events:
        await rig.verifier.verify("jim", code)
        await rig.verifier.verify("jim", code)
    assert [e["event"] for e in events] == ["totp.failed", "totp.locked"]
    assert code not in repr(events) and SECRET not in repr(events)


async def test_replay_is_refused_across_workers_sharing_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    """Two workers (two verifiers, two Redis clients): a code used on one is refused on the other."""
    redis_server.flushall()
    path = tmp_path / "secrets.yaml"
    write_secrets(path, {"jim": SECRET})
    state_a, state_b = RedisState(redis_server.url), RedisState(redis_server.url)
    try:
        worker_a = TotpVerifier(SecretStore(path), state_a, max_failures=2, clock=lambda: T0)
        worker_b = TotpVerifier(SecretStore(path), state_b, max_failures=2, clock=lambda: T0)
        assert await worker_a.verify("jim", code_at(0)) is OK
        assert await worker_b.verify("jim", code_at(0)) is REPLAYED
        assert await worker_a.verify("jim", wrong_code()) is LOCKED, "worker b's failure counts on worker a"
        assert await worker_b.verify("jim", code_at(1)) is LOCKED
    finally:
        await state_a.close()
        await state_b.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [({"max_failures": 0}, "max_failures"), ({"max_failures": 3, "lock_seconds": 0}, "lock_seconds"),
     ({"max_failures": 3, "failure_window": -5}, "failure_window")],
    ids=["max_failures 0 is refused", "a zero lock is refused", "a negative window is refused"],
)
def test_verifier_options_are_checked(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TotpVerifier(SecretStore(tmp_path / "s.yaml"), MemoryState(), **options)


# --- secrets, URIs -------------------------------------------------------------------------------------


def test_new_secret_is_160_random_bits() -> None:
    secrets = {new_secret() for _ in range(50)}
    assert len(secrets) == 50
    for secret in secrets:
        assert len(secret) == 32 and set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        assert len(pyotp.TOTP(secret).byte_secret()) == 20


def test_provisioning_uri_is_what_authenticator_apps_scan() -> None:
    uri = provisioning_uri(SECRET, "jim", "Example CRM")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == "/Example CRM:jim"
    query = parse_qs(parts.query)
    assert query["secret"] == [SECRET] and query["issuer"] == ["Example CRM"]
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == SECRET and parsed.interval == 30 and parsed.digits == 6


# --- SecretStore -------------------------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_round_trips_and_writes_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    old = os.umask(0)  # the most permissive umask: 0600 must come from the code, not the environment
    try:
        SecretStore(path).set("jim", SECRET)
    finally:
        os.umask(old)
    assert mode_of(path) == 0o600
    fresh = SecretStore(path)
    assert fresh.get("jim") == SECRET
    assert fresh.users() == frozenset({"jim"})
    enrolled = fresh.enrolled("jim")
    assert enrolled is not None and datetime.fromisoformat(enrolled).tzinfo is not None


def test_store_keeps_other_users_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    store = SecretStore(path)
    store.set("jim", SECRET)
    store.set("alice", OTHER_SECRET)
    store.set("jim", OTHER_SECRET)
    assert {u: store.get(u) for u in store.users()} == {"jim": OTHER_SECRET, "alice": OTHER_SECRET}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.yaml"]
    assert mode_of(path) == 0o600


def test_missing_file_means_nobody_enrolled(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "absent.yaml")
    assert store.get("jim") is None
    assert store.users() == frozenset()


def test_store_rereads_a_file_changed_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    serving = SecretStore(path)
    assert serving.get("jim") is None
    SecretStore(path).set("jim", SECRET)  # `crm-gateway totp enroll` in another process
    assert serving.get("jim") == SECRET
    # An in-place edit of the same size: the inode stays, mtime moves.
    text = path.read_text().replace(SECRET, OTHER_SECRET)
    path.write_text(text)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert serving.get("jim") == OTHER_SECRET


def test_store_does_not_reparse_an_unchanged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secrets.yaml"
    write_secrets(path, {"jim": SECRET})
    calls: list[Path] = []
    real_parse = totp_module._parse

    def counting_parse(text: str, where: Path) -> Any:
        calls.append(where)
        return real_parse(text, where)

    monkeypatch.setattr(totp_module, "_parse", counting_parse)
    store = SecretStore(path)
    for _ in range(100):
        assert store.get("jim") == SECRET
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("mode", "warned"),
    [(0o600, False), (0o640, True), (0o644, True)],
    ids=["mode 0600 is quiet", "a group-readable file is warned about", "a world-readable file is warned about"],
)
def test_store_warns_about_a_readable_secrets_file(tmp_path: Path, mode: int, warned: bool) -> None:
    path = tmp_path / "secrets.yaml"
    write_secrets(path, {"jim": SECRET}, mode=mode)
    with capture_logs() as events:
        assert SecretStore(path).get("jim") == SECRET
    assert [e["event"] for e in events] == (["totp.secrets_file_readable"] if warned else [])
    assert SECRET not in repr(events)


def test_store_normalises_grouped_lower_case_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    grouped = " ".join(SECRET.lower()[i : i + 4] for i in range(0, 32, 4))
    write_secrets(path, {"jim": grouped})
    assert SecretStore(path).get("jim") == SECRET


BAD_FILES = [
    ("not YAML", "jim: {secret: [unclosed\n", "not valid YAML"),
    ("a list, not a mapping", "- jim\n", "expected a mapping"),
    ("an entry without a secret", "jim: {enrolled: '2026-01-01'}\n", "entry 'jim'"),
    ("a secret that is not base32", "jim: {secret: 'NOT-BASE32-1890!!'}\n", "not base32"),
    ("a secret that is too short", "jim: {secret: 'JBSWY3DP'}\n", "at least 80 bits"),
    # Review 8: PyYAML's problem text names an alias or a tag, here made of the secret.
    ("a secret written as an alias", "jim: {secret: *NOT-BASE32-ALIAS}\n", "not valid YAML"),
    ("a secret written as a tag", "jim: {secret: !NOT-BASE32-TAG x}\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_malformed_file_is_an_error_on_first_load(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text(text)
    with pytest.raises(SecretsFileError, match=message) as info:
        SecretStore(path).get("jim")
    assert "NOT-BASE32" not in str(info.value), "a secret is never repeated in an error"


def test_a_date_that_is_no_date_keeps_the_last_good_secrets(tmp_path: Path) -> None:
    """Review 8: `enrolled: 2026-02-30` made PyYAML raise a plain ValueError: 2FA failed instead."""
    path = tmp_path / "secrets.yaml"
    write_secrets(path, {"jim": SECRET})
    store = SecretStore(path)
    assert store.get("jim") == SECRET
    path.write_text(f"jim: {{secret: {SECRET}, enrolled: 2026-02-30}}\n")
    with capture_logs() as events:
        assert store.get("jim") == SECRET
    assert [e["event"] for e in events] == ["totp.secrets_reload_failed"]
    assert SECRET not in str(events)


def test_malformed_file_after_a_good_load_keeps_the_last_good_secrets(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    write_secrets(path, {"jim": SECRET})
    store = SecretStore(path)
    assert store.get("jim") == SECRET
    path.write_text("jim: {secret: [broken\n")
    with capture_logs() as events:
        assert store.get("jim") == SECRET
    assert [e["event"] for e in events] == ["totp.secrets_reload_failed"]


@pytest.mark.parametrize(
    ("user", "secret", "message"),
    [("", SECRET, "user name"), ("ji m", SECRET, "user name"), ("jim\n", SECRET, "user name"),
     ("jim", "not base32!", "not base32")],
    ids=["an empty user name is refused", "a user name with a space is refused",
         "a user name with a newline is refused", "a malformed secret is refused"],
)
def test_set_refuses_bad_input_and_leaves_the_file_alone(
    tmp_path: Path, user: str, secret: str, message: str
) -> None:
    path = tmp_path / "secrets.yaml"
    SecretStore(path).set("bob", SECRET)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=message):
        SecretStore(path).set(user, secret)
    assert path.read_bytes() == before


def test_set_refuses_to_overwrite_a_file_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "secrets.yaml"
    path.write_text("jim: {secret: [hand-edited and broken\n")
    with pytest.raises(SecretsFileError):
        SecretStore(path).set("bob", SECRET)
    assert path.read_text() == "jim: {secret: [hand-edited and broken\n"


def _enroll_many(path: str, prefix: str) -> None:
    store = SecretStore(Path(path))
    for i in range(5):
        store.set(f"{prefix}{i}", new_secret())


def test_concurrent_enrolments_do_not_lose_each_other(tmp_path: Path) -> None:
    """Several `totp enroll` processes at once: every entry survives (read-modify-write is locked)."""
    path = tmp_path / "secrets.yaml"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_enroll_many, args=(str(path), f"user{n}-")) for n in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0
    assert SecretStore(path).users() == {f"user{n}-{i}" for n in range(6) for i in range(5)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.yaml"]


def test_a_failed_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secrets.yaml"
    SecretStore(path).set("jim", SECRET)
    before = path.read_bytes()

    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(totp_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        SecretStore(path).set("bob", OTHER_SECRET)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.yaml"], "the temporary file is removed"


# --- enrolment ----------------------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9'}\ntotp: {issuer: Example CRM, secrets_file: secrets.yaml}\n")
    return path


def config_of(path: Path) -> Any:
    """A Config as enroll_command uses it (only ``.settings``); the CLI test goes through load_config."""
    return SimpleNamespace(settings=load_settings(path))


def uri_secret(stdout: str) -> str:
    uri = next(line for line in stdout.splitlines() if line.startswith("otpauth://"))
    return parse_qs(urlsplit(uri).query)["secret"][0]


def test_enroll_writes_a_secret_and_prints_uri_and_qr(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with capture_logs() as events:
        assert enroll_command(config_of(config_file), "jim") == 0
    out, err = capsys.readouterr()
    secrets_file = config_file.parent / "secrets.yaml"
    stored = SecretStore(secrets_file).get("jim")
    assert stored is not None and uri_secret(out) == stored
    assert "otpauth://totp/Example%20CRM:jim?" in out
    assert any(ch in out for ch in "█▀▄"), "a QR code is drawn in the terminal"
    assert mode_of(secrets_file) == 0o600
    assert stored not in err and stored not in repr(events), "the secret is never logged"


def test_enroll_refuses_to_replace_without_force(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_of(config_file)
    assert enroll_command(config, "jim") == 0
    first = SecretStore(config_file.parent / "secrets.yaml").get("jim")
    capsys.readouterr()
    assert enroll_command(config, "jim") == 1
    out, err = capsys.readouterr()
    assert "already has a secret" in err and "--force" in err and "otpauth://" not in out
    assert SecretStore(config_file.parent / "secrets.yaml").get("jim") == first
    assert enroll_command(config, "jim", force=True) == 0
    second = SecretStore(config_file.parent / "secrets.yaml").get("jim")
    assert second is not None and second != first
    assert uri_secret(capsys.readouterr().out) == second


def test_enroll_needs_a_totp_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9'}\n")
    assert enroll_command(config_of(path), "jim") == 1
    assert "no `totp` section" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]


def test_enroll_refuses_a_bad_user_name(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert enroll_command(config_of(config_file), "ji m") == 1
    assert "user name" in capsys.readouterr().err


def test_enroll_through_the_command_line(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["totp", "enroll", "jim", "-c", str(config_file)]) == 0
    stored = SecretStore(config_file.parent / "secrets.yaml").get("jim")
    assert stored is not None and uri_secret(capsys.readouterr().out) == stored


def test_enroll_demo_users_enrolls_everyone_once_and_keeps_existing_secrets(config_file: Path) -> None:
    from gateway.demo_crm import DEMO_USERS

    secrets_file = config_file.parent / "secrets.yaml"
    SecretStore(secrets_file).set("jim", SECRET)  # enrolled on an earlier run: keeps working
    config = config_of(config_file)
    first = enroll_demo_users(config)
    assert set(first) == set(DEMO_USERS)
    assert first["jim"] == SECRET
    store = SecretStore(secrets_file)
    assert {u: store.get(u) for u in DEMO_USERS} == first
    assert enroll_demo_users(config) == first, "a second run changes nothing"
    assert mode_of(secrets_file) == 0o600


def test_enroll_demo_users_without_totp_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("upstream: {url: 'http://127.0.0.1:9'}\n")
    assert enroll_demo_users(config_of(path)) == {}
