"""Redis session records kept in the process while Redis reports every change to them.

With ``session.store: redis`` every request read its session from Redis: one round trip,
about 0.1 ms of the gateway's CPU, a third of a request's cost (docs/performance.md). This
cache keeps recently read records and drops one the moment any process writes, deletes or
expires it, or raises its revocation flag: Redis's client-side caching in broadcast mode
(``CLIENT TRACKING ON BCAST PREFIX ...``) pushes the names of changed keys to a connection
of ours. So a logout on one replica ends the copies on every other at once.

The cache is trusted only while that connection is known to be up:

- The invalidations are applied in the connection's ``data_received``, before any request
  task runs again, so a request that arrives after Redis sent the invalidation never sees
  the old record (both land in one poll of the event loop at worst, and I/O callbacks run
  before the tasks they wake).
- Copies are served only on a lease: Redis answers a PING every :data:`HEARTBEAT` seconds,
  and its answer comes after every invalidation it sent before it, so once a PONG is in, the
  cache knew of every change made before that PING went out. A copy is served only while
  such a PING went out less than :data:`LEASE` seconds ago; a stalled connection (a lost
  segment being resent, a partition of that one connection, a frozen Redis) or a stalled event
  loop thus leaves a copy stale for at most :data:`LEASE`, and requests read Redis meanwhile.
- When the connection drops, or a PING stays unanswered for :data:`DEAD_AFTER` seconds, the
  cache is emptied and off until the connection is back (requests read Redis as without it,
  and fail closed if it is down).
- A read that was in flight while anything was invalidated is not kept (its answer may
  predate the change): every invalidation moves :attr:`SessionCache.generation` on.
- An entry is served for at most :data:`ENTRY_LIFETIME` seconds whatever happens.
- A Redis that refuses tracking (older than 6.0, or an ACL without ``client``) leaves the
  cache off, logged as ``session.cache_unavailable`` (again only after it has been on since).
- A connection given up on is detached first: whatever it still does (a TLS close waits up
  to 30 s for Redis's answer) cannot touch the cache a newer connection serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
from aiohttp_session import SessionData

from gateway.logs import get_logger

log = get_logger("sessions")

CHANNEL = b"__redis__:invalidate"
HEARTBEAT = 0.1  # a PING this often (about 10 us of Redis's CPU each)
LEASE = 0.5  # copies are served while a PING sent this recently has been answered
DEAD_AFTER = 2.0  # a PING unanswered this long: reconnect
ENTRY_LIFETIME = 10.0
RETRY_AFTER = 1.0  # reconnect delay after the connection is lost
RETRY_REFUSED = 60.0  # and after Redis refused to track for good
# Error replies that say "never" (not allowed, wrong credentials, a Redis without tracking); any other
# (loading its data, a long script running, too many clients, a failover) says "not now".
PERMANENT_ERRORS = ("NOPERM", "WRONGPASS", "NOAUTH", "ERR unknown", "ERR syntax", "ERR AUTH", "ERR Prefix")
CACHE_SIZE = 4096


class TrackingRefused(Exception):
    """Redis answered a tracking command with an error (too old, or not allowed by its ACL)."""

    @property
    def permanent(self) -> bool:
        return str(self).startswith(PERMANENT_ERRORS)


class SessionCache:
    """Session records by session id, valid while the tracking connection is up.

    ``prefixes`` are the key prefixes whose changes concern a cached record: the
    session's own key and its revocation flag, each followed by the session id.
    ``connection`` is an unconnected redis-py connection made from the store's URL: the
    tracking connection uses its address, TLS context and credentials.
    """

    def __init__(self, connection: Any, prefixes: Sequence[str], *,
                 lifetime: float = ENTRY_LIFETIME, heartbeat: float = HEARTBEAT, lease: float = LEASE,
                 dead_after: float = DEAD_AFTER, retry_after: float = RETRY_AFTER,
                 retry_refused: float = RETRY_REFUSED, clock: Callable[[], float] = time.monotonic) -> None:
        self._connection = connection
        self._prefixes = tuple(prefix.encode() for prefix in prefixes)
        self._lifetime = lifetime
        self._heartbeat = heartbeat
        self._lease = lease
        self._dead_after = dead_after
        self._retry_after = retry_after
        self._retry_refused = retry_refused
        self._clock = clock
        self._entries: dict[str, tuple[float, SessionData]] = {}
        self._live = False
        self._confirmed = -math.inf  # when the last PING that has been answered went out
        self._times_on = 0
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def live(self) -> bool:
        """Whether the tracking connection is up (copies are then served while the lease holds)."""
        return self._live

    @property
    def confirmed(self) -> float:
        """When the last PING that Redis has answered went out: every change before it has come in."""
        return self._confirmed

    @property
    def serving(self) -> bool:
        """Whether copies are served now: the connection is up and the lease holds."""
        return self._live and self._clock() - self._confirmed <= self._lease

    def get(self, sid: str) -> SessionData | None:
        """The record of session ``sid`` as last read, if the cache may still vouch for it."""
        if not self._live:
            return None
        entry = self._entries.get(sid)
        if entry is None:
            return None
        now = self._clock()
        if now - self._confirmed > self._lease:
            return None  # kept: a late PONG proves every invalidation sent before it has come in
        if now - entry[0] > self._lifetime:
            del self._entries[sid]
            return None
        return entry[1]

    def put(self, sid: str, record: SessionData, generation: int) -> None:
        """Keep ``record``, read with :attr:`generation` at ``generation``, unless anything changed since."""
        if not self._live or generation != self.generation:
            return
        if len(self._entries) >= CACHE_SIZE and sid not in self._entries:
            self._entries.pop(next(iter(self._entries)))  # oldest first: dicts keep order
        self._entries[sid] = (self._clock(), record)

    def forget(self, sid: str) -> None:
        """Drop ``sid`` (this process wrote it); a read of it in flight is not kept either."""
        self.generation += 1
        self._entries.pop(sid, None)

    def invalidate(self, keys: list[bytes] | None) -> None:
        """Redis says ``keys`` changed (None: everything, after a FLUSHDB or FLUSHALL)."""
        self.generation += 1
        if keys is None:
            self._entries.clear()
            return
        for key in keys:
            for prefix in self._prefixes:
                if key.startswith(prefix):
                    self._entries.pop(key[len(prefix):].decode("utf-8", "surrogateescape"), None)

    def _turn_on(self, confirmed: float) -> None:
        self.generation += 1
        self._entries.clear()
        self._confirmed = confirmed
        self._live = True
        self._times_on += 1
        log.info("session.cache_on")

    def _turn_off(self, why: str | None = None) -> None:
        """Stop serving copies and drop them; ``why`` is logged if the cache was on."""
        if self._live and why is not None:
            log.warning("session.cache_off", error=why)
        self.generation += 1
        self._live = False
        self._entries.clear()

    def start(self) -> None:
        """Keep a tracking connection open (and reopen it) until :meth:`close`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="session-cache")

    async def close(self) -> None:
        self._turn_off()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        refused_before = False
        while True:
            delay = self._retry_after
            why = None
            times_on = self._times_on
            try:
                await self._track()
            except TrackingRefused as exc:
                why = str(exc)
                if exc.permanent:
                    delay = self._retry_refused
                    if not refused_before:
                        log.warning("session.cache_unavailable", error=why,
                                    hint="Redis 6+ with CLIENT allowed caches sessions in-process")
                    refused_before = True
            except TimeoutError:
                why = f"no answer from Redis in {self._dead_after} s"
            except (OSError, hiredis.ProtocolError) as exc:
                why = f"{type(exc).__name__}: {exc}"
            except Exception:  # a bug here must not end the retries; the cache is off meanwhile
                log.exception("session.cache_failed")
                why = "failed"
            finally:
                if self._times_on != times_on:
                    refused_before = False  # it was on meanwhile: a later refusal is news again
                self._turn_off(why)
            await asyncio.sleep(delay)

    async def _open(self) -> tuple[asyncio.Transport, _Tracking]:
        loop = asyncio.get_running_loop()
        conn = self._connection
        timeout = getattr(conn, "socket_connect_timeout", None) or self._dead_after
        path = getattr(conn, "path", None)
        context: ssl.SSLContext | None = None
        if (wrapper := getattr(conn, "ssl_context", None)) is not None:
            context = wrapper.get()
        async with asyncio.timeout(timeout):
            if path:
                transport, protocol = await loop.create_unix_connection(lambda: _Tracking(self), path)
            else:
                transport, protocol = await loop.create_connection(
                    lambda: _Tracking(self), conn.host, conn.port, ssl=context,
                    server_hostname=conn.host if context is not None else None)
        return transport, protocol

    async def _track(self) -> None:
        transport, protocol = await self._open()
        try:
            conn = self._connection

            def command(*parts: str | bytes | int) -> bytes:
                return b"".join(conn.pack_command(*parts))  # in RESP, by the redis client's own encoder

            async with asyncio.timeout(self._dead_after):
                if conn.password:
                    auth = ("AUTH", conn.username, conn.password) if conn.username else ("AUTH", conn.password)
                    await protocol.ask(command(*auth))
                client_id = await protocol.ask(command("CLIENT", "ID"))
                tracking: list[str | bytes | int] = ["CLIENT", "TRACKING", "ON", "REDIRECT", client_id, "BCAST"]
                for prefix in self._prefixes:
                    tracking += ["PREFIX", prefix]
                sent = self._clock()
                await protocol.ask(command(*tracking))
                await protocol.ask(command("SUBSCRIBE", CHANNEL))
            if protocol.lost is not None:  # closed as the answer came in: never on over a dead connection
                raise protocol.lost
            self._turn_on(sent)
            ping = command("PING")
            while True:
                await asyncio.sleep(self._heartbeat)
                sent = self._clock()
                async with asyncio.timeout(self._dead_after):
                    await protocol.ask(ping)
                self._confirmed = sent
        finally:
            # Given up: whatever this connection still does (a TLS close can wait 30 s for Redis's
            # answer) must not touch the cache, which a newer connection may serve by then.
            protocol.detach()
            transport.abort()


class _Tracking(asyncio.Protocol):
    """The tracking connection: replies to our commands in order, invalidations applied at once."""

    def __init__(self, cache: SessionCache) -> None:
        self._cache: SessionCache | None = cache
        self._reader = hiredis.Reader()
        self._waiting: list[asyncio.Future[Any]] = []
        self._transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    def detach(self) -> None:
        """Leave the cache alone from now on, and fail what still waits."""
        self._cache = None
        self._fail(ConnectionError("tracking connection given up"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def ask(self, request: bytes) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (an error reply raises TrackingRefused)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.lost is not None or self._transport is None:
            future.set_exception(self.lost or ConnectionError("not connected"))
            return future
        self._waiting.append(future)
        self._transport.write(request)
        return future

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
            while (reply := self._reader.gets()) is not False:
                self._dispatch(reply)
        except hiredis.ProtocolError as exc:
            self._fail(exc)

    def _dispatch(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message" and reply[1] == CHANNEL:
            if self._cache is not None:
                self._cache.invalidate(reply[2])
            return
        if not self._waiting:
            self._fail(hiredis.ProtocolError(f"unexpected reply from Redis: {reply!r:.80}"))
            return
        future = self._waiting.pop(0)
        if future.done():
            return
        if isinstance(reply, hiredis.ReplyError):
            future.set_exception(TrackingRefused(str(reply)))
        else:
            future.set_result(reply)

    def eof_received(self) -> bool:
        self._fail(ConnectionError("Redis closed the tracking connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("tracking connection closed"))

    def _fail(self, exc: Exception) -> None:
        """Stop trusting the cache now (not when the task gets to run), and fail what waits."""
        if self._cache is not None:
            self._cache._turn_off(f"{type(exc).__name__}: {exc}")
        if self.lost is None:
            self.lost = exc
        for future in self._waiting:
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()
        if self._transport is not None:
            self._transport.close()
