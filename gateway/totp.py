"""TOTP second factor (RFC 6238 via pyotp): the secrets file, enrolment, verification (DESIGN.md §4).

Secrets live in one YAML file (``totp.secrets_file``), written only by
``crm-gateway totp enroll`` (and the demo), read by every worker. It is written
atomically with mode 0600, and re-read when it changes, so enrolling a user
needs no restart.

Verification accepts a 30 s step and one step either side, accepts each code
once per user (the used step is recorded in the shared state, so a code seen by
one worker is refused by all), and locks a user out after ``max_failures``
failed attempts. A code or secret is never logged.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hmac
import os
import re
import secrets
import sys
import time
from binascii import Error as Base32Error
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyotp
import yaml

from gateway.logs import get_logger
from gateway.state import SharedState

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = [
    "SecretStore",
    "SecretsFileError",
    "TotpVerifier",
    "VerifyResult",
    "enroll_command",
    "enroll_demo_users",
    "new_secret",
    "provisioning_uri",
]

log = get_logger("totp")

STEP = 30  # seconds per code (RFC 6238 default, what every authenticator app uses)
DIGITS = 6
USED_TTL = 120.0  # a step is accepted for 90 s (±1 step); remember it used for longer than that
_CODE = re.compile(r"[0-9]{6}")  # ASCII only: str.isdigit() would accept '٣' and friends
_BASE32 = re.compile(r"[A-Z2-7]+=*")


class SecretsFileError(Exception):
    """The secrets file cannot be read or is not ``{user: {secret: BASE32, enrolled: ...}}``."""


def _valid_secret(secret: str) -> bool:
    if not _BASE32.fullmatch(secret) or len(secret) < 16:
        return False
    try:
        pyotp.TOTP(secret).byte_secret()
    except (Base32Error, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class _Snapshot:
    stamp: tuple[int, int, int] | None  # (inode, mtime_ns, size); None when the file is absent
    secrets: Mapping[str, str]
    enrolled: Mapping[str, str]


def _parse(text: str, path: Path) -> tuple[dict[str, str], dict[str, str]]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # Where and what only: PyYAML's own text quotes the line, which holds a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        # ... and a problem may name a token (an alias or tag made of a secret): quoted parts hidden.
        problem = re.sub(r"'[^']*'", "'...'", getattr(exc, "problem", None) or "cannot be parsed")
        raise SecretsFileError(f"{path}{where}: not valid YAML: {problem}") from None
    except ValueError:  # a timestamp that is no date (enrolled: 2026-02-30), raised by PyYAML's constructor
        raise SecretsFileError(f"{path}: not valid YAML: a value cannot be read (a date that is no date?)") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise SecretsFileError(f"{path}: expected a mapping of user -> {{secret, enrolled}}")
    found: dict[str, str] = {}
    enrolled: dict[str, str] = {}
    for user, entry in data.items():
        if not (isinstance(user, str) and isinstance(entry, dict) and isinstance(entry.get("secret"), str)):
            raise SecretsFileError(f"{path}: entry {user!r}: expected {{secret: BASE32, enrolled: ISO-8601}}")
        # Secrets copied from elsewhere are often grouped ("abcd efgh ...") or lower case.
        secret = "".join(entry["secret"].split()).upper()
        if not _valid_secret(secret):
            # The secret itself is not repeated in the message: error output is often logged.
            raise SecretsFileError(f"{path}: entry {user!r}: secret is not base32 of at least 80 bits")
        found[user] = secret
        when = entry.get("enrolled")
        enrolled[user] = when.isoformat() if isinstance(when, datetime) else str(when or "")
    return found, enrolled


class SecretStore:
    """The secrets file, cached and re-read when a cheap ``stat`` shows it changed.

    A file that becomes unreadable or malformed after a good load keeps the last
    good secrets (and logs why), like a failed config reload keeps the running
    policy; a file that was never good raises :class:`SecretsFileError`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._snapshot: _Snapshot | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SecretsFileError(f"{self.path}: cannot stat: {exc.strerror}") from None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self, stamp: tuple[int, int, int] | None) -> _Snapshot:
        if stamp is None:
            return _Snapshot(None, {}, {})
        try:
            text = self.path.read_text(encoding="utf-8")
            mode = os.stat(self.path).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretsFileError(f"{self.path}: cannot read: {exc}") from None
        found, enrolled = _parse(text, self.path)
        if mode & 0o077:
            log.warning("totp.secrets_file_readable", path=str(self.path), mode=oct(mode & 0o777))
        return _Snapshot(stamp, found, enrolled)

    def _current(self) -> _Snapshot:
        snapshot = self._snapshot
        try:
            stamp = self._stamp()
            if snapshot is not None and snapshot.stamp == stamp:
                return snapshot
            snapshot = self._read(stamp)
        except SecretsFileError as exc:
            if self._snapshot is None:
                raise
            log.error("totp.secrets_reload_failed", path=str(self.path), error=str(exc))
            return self._snapshot
        self._snapshot = snapshot
        return snapshot

    def get(self, user: str) -> str | None:
        return self._current().secrets.get(user)

    def users(self) -> frozenset[str]:
        return frozenset(self._current().secrets)

    def enrolled(self, user: str) -> str | None:
        """When ``user`` was enrolled (ISO-8601 as written), or None."""
        return self._current().enrolled.get(user)

    def set(self, user: str, secret: str) -> None:
        """Store (or replace) one user's secret; see :meth:`set_many`."""
        self.set_many({user: secret})

    def set_many(self, entries: Mapping[str, str]) -> None:
        """Store several secrets in one atomic write.

        The file is read fresh (not from the cache) so an entry written by
        another process since our last read is kept, then written to a temporary
        file in the same folder (created 0600: the secret never sits in a
        readable file, not even briefly), fsynced and renamed over the old one:
        a crash leaves either the old or the new file, never half of one.
        """
        for user, secret in entries.items():
            if not user or any(ch.isspace() or not ch.isprintable() for ch in user):
                raise ValueError(f"user name must be non-empty, no spaces or control characters: {user!r}")
            if not _valid_secret(secret):
                raise ValueError(f"secret for {user!r} is not base32 of at least 80 bits")
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        # Two enrolments at once must not lose one another's entry: hold an
        # advisory lock on the folder across read-modify-write (readers never lock).
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(dir_fd, fcntl.LOCK_EX)
            data = self._read_raw()
            now = datetime.now(UTC).replace(microsecond=0).isoformat()
            for user, secret in entries.items():
                data[user] = {"secret": secret, "enrolled": now}
            text = (
                "# TOTP secrets, written by `crm-gateway totp enroll`. Keep this file mode 0600.\n"
                + yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)
            )
            self._write_atomic(text)
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)  # also releases the lock
        self._snapshot = None

    def _read_raw(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretsFileError(f"{self.path}: cannot read: {exc}") from None
        _parse(text, self.path)  # refuse to rewrite (and so destroy) a file we do not understand
        data = yaml.safe_load(text)
        return dict(data) if isinstance(data, dict) else {}

    def _write_atomic(self, text: str) -> None:
        fd, tmp_name = _create_private_temp(self.path.parent, self.path.name)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp_name, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise


def _create_private_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new file, mode 0600 from the moment it exists (os.open with 0o600 and O_EXCL)."""
    for _ in range(100):
        candidate = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            continue
        os.fchmod(fd, 0o600)  # exactly 0600 whatever the umask
        return fd, str(candidate)
    raise FileExistsError(f"could not create a temporary file in {folder}")


def new_secret() -> str:
    """A fresh random secret: 32 base32 characters, 160 bits (RFC 4226's recommended length)."""
    return pyotp.random_base32()


def provisioning_uri(secret: str, user: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI an authenticator app scans."""
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
    uri: str = totp.provisioning_uri(name=user, issuer_name=issuer)
    return uri


class VerifyResult(enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # wrong, malformed or out-of-window code
    REPLAYED = "replayed"  # a right code already used by this user
    LOCKED = "locked"  # too many failures: no code is checked until the lock ends
    NO_SECRET = "no_secret"  # noqa: S105 (a result name, not a password): the user has not enrolled


class TotpVerifier:
    """Checks a user's code against their secret, with replay protection and lock-out.

    Failures are counted per user in a fixed window (``failure_window``) that
    starts at the first failure; the ``max_failures``-th failure locks the user
    for ``lock_seconds`` and is itself answered LOCKED. While locked, no code is
    even compared, so a lock cannot be used as an oracle. Success clears the
    count. Each attempt is counted before its code is compared (and the count
    cleared again by a success): codes sent all at once, before any failure is
    counted, would otherwise all be compared (with Redis, 39 wrong codes and the
    right one sent together got the right one accepted at a limit of 3).
    :class:`~gateway.state.StateUnavailable` propagates: without the shared
    state a replay or a lock cannot be ruled out, so the caller answers 503.
    """

    def __init__(
        self,
        secrets: SecretStore,
        state: SharedState,
        *,
        max_failures: int,
        lock_seconds: float = 900,
        failure_window: float = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        if lock_seconds <= 0 or failure_window <= 0:
            raise ValueError("lock_seconds and failure_window must be positive")
        self.secrets = secrets
        self.state = state
        self.max_failures = max_failures
        self.lock_seconds = float(lock_seconds)
        self.failure_window = float(failure_window)
        self.clock = clock

    async def locked_for(self, user: str) -> float | None:
        """Seconds left on the user's lock-out, or None."""
        return await self.state.flagged(f"totp:lock:{user}")

    async def verify(self, user: str, code: str) -> VerifyResult:
        if await self.locked_for(user) is not None:
            return VerifyResult.LOCKED
        secret = self.secrets.get(user)
        if secret is None:
            return VerifyResult.NO_SECRET
        attempts = await self.state.hit(f"totp:fail:{user}", self.failure_window)
        if attempts > self.max_failures:  # others sent at the same time took the tries left: not compared
            await self.state.flag(f"totp:lock:{user}", self.lock_seconds)
            return VerifyResult.LOCKED
        if await self.locked_for(user) is not None:  # one of them locked it (and cleared the count) meanwhile
            return VerifyResult.LOCKED
        counter = self._matching_counter(secret, code)
        if counter is None:
            return await self._failure(user, VerifyResult.INVALID, attempts)
        if not await self.state.first_use(f"totp:used:{user}:{counter}", ttl=USED_TTL):
            return await self._failure(user, VerifyResult.REPLAYED, attempts)
        await self.state.clear(f"totp:fail:{user}")
        return VerifyResult.OK

    def _matching_counter(self, secret: str, code: str) -> int | None:
        """The time step whose code this is (current, previous or next), or None."""
        candidate = "".join(code.split())
        if not _CODE.fullmatch(candidate):
            return None
        totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP)
        now = int(self.clock() // STEP)
        found: int | None = None
        for counter in (now - 1, now, now + 1):  # compare all three: no early exit to time
            if hmac.compare_digest(totp.generate_otp(counter).encode(), candidate.encode()) and found is None:
                found = counter
        return found

    async def _failure(self, user: str, result: VerifyResult, failures: int) -> VerifyResult:
        if failures < self.max_failures:
            log.info("totp.failed", user=user, result=result.value, failures=failures)
            return result
        await self.state.flag(f"totp:lock:{user}", self.lock_seconds)
        # A fresh count once the lock ends: the user gets max_failures tries again.
        await self.state.clear(f"totp:fail:{user}")
        log.warning("totp.locked", user=user, failures=failures, lock_seconds=self.lock_seconds)
        return VerifyResult.LOCKED


def _print_qr(uri: str) -> None:
    import segno

    segno.make(uri, error="m").terminal(out=sys.stdout, compact=True)


def enroll_command(config: Config, user: str, *, force: bool = False) -> int:
    """``crm-gateway totp enroll USER -c FILE``: create and store a secret, print its URI and QR code."""
    settings = config.settings.totp
    if settings is None:
        print(
            f"totp enroll: {config.settings.path} has no `totp` section; add one, e.g.\n"
            "  totp: {issuer: Example CRM, secrets_file: totp-secrets.yaml}",
            file=sys.stderr,
        )
        return 1
    store = SecretStore(settings.secrets_file)
    try:
        existing = store.get(user)
    except SecretsFileError as exc:
        print(f"totp enroll: {exc}", file=sys.stderr)
        return 1
    if existing is not None and not force:
        print(
            f"totp enroll: {user!r} already has a secret in {store.path} "
            f"(enrolled {store.enrolled(user) or 'at an unknown time'}); "
            "pass --force to replace it (their authenticator app must then be set up again)",
            file=sys.stderr,
        )
        return 1
    secret = new_secret()
    try:
        store.set(user, secret)
    except (OSError, ValueError, SecretsFileError) as exc:
        print(f"totp enroll: cannot store the secret for {user!r}: {exc}", file=sys.stderr)
        return 1
    uri = provisioning_uri(secret, user, settings.issuer)
    print(f"{'Replaced' if existing else 'Created'} a TOTP secret for {user} in {store.path}.")
    print("Scan the QR code with an authenticator app, or enter this URI:")
    print(uri)
    _print_qr(uri)
    return 0


def _demo_users() -> Iterable[str]:
    from gateway.demo_crm import DEMO_USERS  # lazily: serving never loads the demo CRM

    return DEMO_USERS


def enroll_demo_users(config: Config) -> dict[str, str]:
    """For ``crm-gateway demo``: give every demo user a secret; return all of them, to print once.

    Users who already have a secret keep it (an authenticator app set up on an
    earlier run stays valid). Without a ``totp`` section there is nothing to do.
    """
    settings = config.settings.totp
    if settings is None:
        return {}
    store = SecretStore(settings.secrets_file)
    users = list(_demo_users())
    missing = {user: new_secret() for user in users if store.get(user) is None}
    if missing:
        store.set_many(missing)
    result: dict[str, str] = {}
    for user in users:
        secret = store.get(user)
        if secret is not None:
            result[user] = secret
    return result
