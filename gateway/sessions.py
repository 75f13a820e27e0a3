"""The gateway's own session (aiohttp-session): who logged in, when, and which CRM session is theirs.

Two storages, chosen by ``session.store``: an encrypted cookie (Fernet, the
embedded default) or Redis (shared by workers and replicas). Either way the
session holds only what the gateway needs:

- ``sid``: a random id, so a logout can revoke even a stateless cookie;
- ``user``, ``login_at``, ``seen``: identity and the idle/absolute clocks;
- ``crm``: SHA-256 of the CRM session cookie bound to this gateway session;
- ``mfa``: whether the second factor was given; ``pending``: the CRM's held
  login response while it was not; ``csrf``: the 2FA form's token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp_session import AbstractStorage, Session, SessionData
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.fernet import Fernet

from gateway.caching import cache_short_keys
from gateway.cookies import UnreadableCookie, own_cookie
from gateway.logs import get_logger
from gateway.session_cache import SessionCache
from gateway.settings import SessionSettings
from gateway.state import SharedState, StateUnavailable

if TYPE_CHECKING:
    from gateway.exchange import Exchange

log = get_logger("sessions")

KEY_ENV = "CRMGW_SECRET_KEY"
SEEN_RESOLUTION = 60.0  # refresh the idle clock at most once a minute: no Set-Cookie on every response
REVOKED = "session:revoked:"  # + the session's Redis key, or its sid with the cookie store


def read_secret_key(settings: SessionSettings) -> bytes | None:
    """The 32-byte session key from $CRMGW_SECRET_KEY or the key file, None if neither is there.

    Raises ValueError, naming the variable or file, for a key that is not 32 bytes of urlsafe-base64.
    """
    text = os.environ.get(KEY_ENV)
    source = KEY_ENV
    if text is None and settings.secret_key_file.exists():
        try:
            text = settings.secret_key_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.__class__.__name__
            raise ValueError(f"{settings.secret_key_file}: session key cannot be read ({why})") from None
        source = str(settings.secret_key_file)
    if text is None:
        return None
    try:
        key = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ValueError(f"{source}: session key is not urlsafe-base64") from None
    if len(key) != 32:
        raise ValueError(f"{source}: session key must be 32 bytes, got {len(key)}")
    return key


def load_secret_key(settings: SessionSettings) -> bytes:
    """The 32-byte session key: $CRMGW_SECRET_KEY, else the key file, else a new key saved 0600."""
    if (key := read_secret_key(settings)) is not None:
        return key
    key = os.urandom(32)
    path = settings.secret_key_file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(base64.urlsafe_b64encode(key).decode("ascii") + "\n")
    log.warning("session.key_generated", path=str(path),
                hint="replicas must share one key: set CRMGW_SECRET_KEY or copy this file")
    return key


@cache_short_keys(maxsize=4096, longest=512)  # a browser sends the same CRM cookie on every request
def fingerprint(value: str) -> str:
    """What the session stores of the CRM's cookie: never the cookie itself."""
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


class _Unsure(Exception):
    """The Cookie header is not plain RFC 6265 pairs: only the full parser reads it right."""


# RFC 6265 §4.2.1: name=value pairs, a value optionally quoted, made of cookie-octets
# (no whitespace, '"', ',', ';' or '\\'), separated by ';' and optional spaces. Every
# quantifier is possessive (Python 3.11): the pieces cannot overlap, so giving characters back
# never helps, and without it a header of 16 KiB of spaces took a second to refuse.
_PAIR = r"""[!#$%&'*+\-.^_`|~0-9A-Za-z]++=(?>"[!#-+\--:<-\[\]-~]*+"|[!#-+\--:<-\[\]-~]*+)"""
_PLAIN_COOKIES = re.compile(rf"[ \t]*+{_PAIR}(?:[ \t]*+;[ \t]*+{_PAIR})*+[ \t]*+(?:;[ \t]*+)?+")


@cache_short_keys(maxsize=1024, longest=4096)  # a browser sends the same Cookie header request after request
def cookie_value(header: str, name: str) -> str | None:
    """The value of cookie ``name`` in a Cookie header (one copy, or several of one value).

    The cheap path of every request: aiohttp's parser builds a Morsel per cookie.
    Raises :class:`_Unsure` unless the header is plain RFC 6265 pairs, where
    splitting at ';' and the first '=' is exact (a quoted value elsewhere may
    hold a ';' and, in it, text that looks like this cookie).
    """
    if not _PLAIN_COOKIES.fullmatch(header):
        raise _Unsure
    found = None
    for part in header.split(";"):
        key, _, value = part.partition("=")
        if key.strip() == name:
            if found is not None and value.strip().strip('"') != found:
                raise _Unsure  # two copies: gateway.cookies.own_cookie says why that is refused
            found = value.strip().strip('"')
    return found


class FastCookieRead(AbstractStorage):
    """Reads the session cookie without parsing every cookie of the request (see cookie_value).

    A line that is not plain RFC 6265 pairs, or several lines, are read as the proxy strips
    cookies, at ``;`` only (:func:`gateway.cookies.own_cookie`), not by aiohttp's parser:
    that parser also splits at whitespace and commas, so ``pref=1 crmgw_session=X`` (one
    cookie to the browser, which a CRM page can set) was read as a second session cookie.
    A copy hidden so raises :class:`gateway.cookies.UnreadableCookie`.
    """

    def load_cookie(self, request: web.Request) -> str | None:
        lines = request.headers.getall("Cookie", ())
        if not lines:
            return None
        try:
            value = cookie_value(lines[0], self.cookie_name) if len(lines) == 1 else own_cookie(lines, self.cookie_name)
        except _Unsure:
            value = own_cookie(lines, self.cookie_name)
        if value is not None and not value.isascii():
            # The gateway writes hex (Redis) or base64 (Fernet); raw bytes in a header arrive as
            # surrogates, which the Redis client and Fernet would raise on (a 500 per request).
            raise UnreadableCookie(f"a {self.cookie_name!r} cookie that is not ASCII")
        return value


class CachedCookieStorage(FastCookieRead, EncryptedCookieStorage):
    """Encrypted-cookie sessions that remember what recent cookies decrypted to.

    A browser sends the same cookie on every request until the session changes,
    and authenticating + decrypting it (Fernet) is the costliest step of a
    request. The cache is keyed by the whole cookie value, which Fernet has
    authenticated once, so it can only return what that exact cookie holds;
    expiry and revocation are still judged on every request by SessionStore.
    """

    CACHE_SIZE = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decoded: dict[str, Any] = {}

    async def load_session(self, request: web.Request) -> Session:
        cookie = self.load_cookie(request)
        if cookie is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        data = self._decoded.get(cookie)
        if data is None:
            session = await super().load_session(request)
            if not session.new:
                if len(self._decoded) >= self.CACHE_SIZE:
                    self._decoded.pop(next(iter(self._decoded)))  # oldest first: dicts keep order
                self._decoded[cookie] = {"created": session.created, "session": dict(session)}
            return session
        return Session(None, data=data, new=False, max_age=self.max_age)


class SessionStore:
    """Loads and saves gateway sessions; storage failures become StateUnavailable."""

    def __init__(self, settings: SessionSettings, state: SharedState, *, redis_client: Any = None) -> None:
        self.settings = settings
        self.state = state
        params: dict[str, Any] = {
            "cookie_name": settings.cookie_name,
            "max_age": int(settings.max_age),
            "secure": settings.cookie_secure,
            "httponly": True,
            "samesite": "Lax",
            "path": "/",
        }
        self.storage: AbstractStorage
        self._read_flagged: Callable[[str, str], Awaitable[tuple[bytes | None, float | None]]] | None = None
        self.cache: SessionCache | None = None
        # what a storage failure raises: redis (and its ~9 MiB of modules) is imported only for its store
        self._errors: tuple[type[Exception], ...] = (OSError,)
        if settings.store == "redis":
            import redis.asyncio as redis
            from aiohttp_session.redis_storage import RedisStorage

            self._errors = (redis.RedisError, OSError)
            client = redis_client or redis.from_url(settings.redis_url, socket_timeout=0.5,
                                                    socket_connect_timeout=0.5)
            class FastRedisStorage(FastCookieRead, RedisStorage):
                pass

            self.storage = FastRedisStorage(client, key_factory=lambda: os.urandom(24).hex(), **params)
            # The session and its revocation flag in one round trip (a Redis command is ~40 us of
            # this process's CPU): with the state in the same Redis, which is how the app opens them.
            self._read_flagged = getattr(state, "read_flagged", None)
            if self._read_flagged is not None:
                # and both kept in-process while Redis reports their changes (see gateway.session_cache)
                self.cache = SessionCache(client.connection_pool.make_connection(),
                                          (f"{settings.cookie_name}_", getattr(state, "prefix", "") + REVOKED))
        else:
            self.storage = CachedCookieStorage(Fernet(base64.urlsafe_b64encode(load_secret_key(settings))),
                                                  **params)
        self.cookie_name = settings.cookie_name

    def start(self) -> None:
        """Start what runs beside the requests (the Redis session cache's tracking connection)."""
        if self.cache is not None:
            self.cache.start()

    async def close(self) -> None:
        if self.cache is not None:
            await self.cache.close()

    def has_cookie(self, request: web.Request) -> bool:
        return self.cookie_name in request.cookies

    async def load(self, request: web.Request, *, idle: bool = True) -> Session:
        """The request's live session, or a new empty one if absent, expired or revoked.

        ``idle=False`` leaves the idle clock out: an open WebSocket's request is as old as the
        socket, and its traffic is the user's activity (see Gateway.still_allowed).
        """
        revoked: float | None = None
        try:
            if self._read_flagged is None:
                session = await self.storage.load_session(request)
            else:
                session, revoked = await self._load_with_flag(request)
        except self._errors as exc:
            raise StateUnavailable(str(exc)) from exc
        if session.new or "user" not in session:
            return session
        now = time.time()
        expired = (
            now - float(session.get("login_at", 0)) > self.settings.max_age
            or (idle and now - float(session.get("seen", 0)) > self.settings.idle_timeout)
        )
        if self._read_flagged is None and not expired:
            revoked = await self.state.flagged(self._revocation(session))
        if expired or revoked is not None:
            session.invalidate()
        return session

    async def _load_with_flag(self, request: web.Request) -> tuple[Session, float | None]:
        """A Redis session (as aiohttp-session's RedisStorage reads it) and its revocation flag, in one round trip."""
        assert self._read_flagged is not None
        key = self.storage.load_cookie(request)
        if key is None:
            return Session(None, data=None, new=True, max_age=self.storage.max_age), None
        cache = self.cache
        if cache is not None and (cached := cache.get(key)) is not None:
            return Session(key, data=cached, new=False, max_age=self.storage.max_age), None
        generation = cache.generation if cache is not None else 0
        value, revoked = await self._read_flagged(f"{self.cookie_name}_{key}", f"{REVOKED}{key}")
        if value is None:
            return Session(None, data=None, new=True, max_age=self.storage.max_age), None
        data: SessionData | None
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if cache is not None and revoked is None and isinstance(data, dict):
            cache.put(key, data, generation)  # Session copies what it is given: the entry stays as read
        return Session(key, data=data, new=False, max_age=self.storage.max_age), revoked

    def _revocation(self, session: Session) -> str:
        """The flag that revokes ``session``: by its Redis key (read with it, see load), else by its ``sid``."""
        if self._read_flagged is not None:
            return f"{REVOKED}{session.identity}"
        return f"{REVOKED}{session.get('sid', '')}"

    @staticmethod
    def touch(session: Session) -> bool:
        """Move the idle clock on; True when the session must be saved for it."""
        now = time.time()
        if "user" in session and now - float(session.get("seen", 0)) > SEEN_RESOLUTION:
            session["seen"] = now
            return True
        return False

    async def begin(self, request: web.Request, old: Session, user: str) -> Session:
        """A fresh session for a user who just logged in (never reuse an id: session fixation)."""
        if not old.new:
            await self.end(old)
        session = await self.storage.new_session()
        now = time.time()
        session.update({"sid": os.urandom(16).hex(), "user": user, "login_at": now, "seen": now})
        return session

    async def end(self, session: Session) -> None:
        """Log out: revoke the id (a copied cookie stops working) and empty the session."""
        if session.get("sid") and (self._read_flagged is None or session.identity is not None):
            await self.state.flag(self._revocation(session), self.settings.max_age)
        self._forget(session)
        session.invalidate()

    async def save(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        if session.new and session.empty:
            return  # nothing to say; do not hand anonymous clients a cookie
        try:
            await self.storage.save_session(request, response, session)
        except self._errors as exc:
            raise StateUnavailable(str(exc)) from exc
        finally:
            self._forget(session)

    def _forget(self, session: Session) -> None:
        """This process changed ``session`` in Redis: its copy goes now, not when Redis says so."""
        if self.cache is not None and isinstance(session.identity, str):
            self.cache.forget(session.identity)



def save_session_later(ex: Exchange, store: SessionStore) -> None:
    """Save ex.session (whichever it is by then) just before the response goes out; once."""
    if ex.state.get("session_save"):
        return
    ex.state["session_save"] = True

    async def save(ex: Exchange, response: web.StreamResponse) -> None:
        if ex.session is not None:
            await store.save(ex.request, response, ex.session)

    ex.send_hooks.append(save)
