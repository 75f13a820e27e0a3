"""Running the gateway: listen, reload on SIGHUP or file change, drain on SIGTERM.

A reload builds a whole new Config off the event loop and swaps it in only if
every file validates; otherwise the running policy stays and the problems are
logged with their ``file:line``. SIGTERM stops accepting, lets in-flight
requests finish (bounded by the drain timeout) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import os
import signal
import socket
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway import logs
from gateway.app import GATEWAY, Gateway
from gateway.config import Config, load_config
from gateway.logs import get_logger
from gateway.metrics import RELOADS
from gateway.settings import unshared_state
from gateway.yamlsrc import ConfigError

log = get_logger("server")

WATCH_INTERVAL = 1.0
# A changed file is loaded once it has stayed unchanged this long. Writers truncate, then
# write in pieces, and YAML has no end marker: the first half of a policy file is often a
# valid policy without its lock-down, so loading it early would open the gateway.
SETTLE_TIME = 1.0
SETTLE_POLL = 0.1
# After the drain (bounded by drain_timeout), what is still running gets this long to end
# once cancelled; aiohttp's own shutdown would wait the whole drain timeout twice more.
CANCEL_GRACE = 1.0
# How long a connection may go without a complete request: idle between keep-alive
# requests, or still trickling its request head (slowloris). aiohttp keeps both for an
# hour; nginx's keepalive_timeout is 75 s, which also outlasts the 60 s idle reuse of
# load balancers and nginx's upstream keepalive, so they never reuse a connection we close.
IDLE_TIMEOUT = 75.0
# A reload hands freed memory back at once and again this much later, when the requests that
# started under the old policy (which keep it alive) are done.
TRIM_AFTER_RELOAD = 2.0
# Main-file sections whose resources are opened once at start (the listening socket, the
# session store and its key): a reload that changes them says so and keeps the running ones.
RESTART_SECTIONS = ("listen", "session")


def freeze_heap() -> None:
    """Keep the cyclic garbage collector off the loaded policy.

    A large policy is hundreds of thousands of long-lived objects; every full
    collection would walk them all (about 1.3 s at 100,000 rules), stalling
    requests at random. Freezing moves them out of the collector's sight. It is
    done once at start, after a collection; a reload only freezes (see :meth:`Server.reload`).
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    trim_heap()


# The cyclic collector's thresholds while serving (Python's default: 700, 10, 10). A request
# allocates a few hundred container objects, nearly all freed by reference counting, so the
# default runs a young collection every few requests: 3% of a worker's CPU in the profile.
# Collecting 30x less often keeps at most ~20,000 young objects (a few MiB) waiting.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Collect cyclic garbage less often than Python's default (see GC_THRESHOLDS)."""
    gc.set_threshold(*GC_THRESHOLDS)


def _load_config(path: Path, previous: Config) -> Config:
    return load_config(path, previous=previous)


def trim_heap() -> None:
    """Hand memory that loading freed back to the system (glibc's malloc_trim; elsewhere nothing).

    A load's temporary values are freed, but malloc keeps the pages for reuse,
    so the process would keep the size of its peak.
    """
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)


def one_malloc_arena() -> None:
    """Make every thread allocate from glibc's main arena (elsewhere nothing).

    A reload runs in a thread; glibc would give that thread an arena of its
    own, where the new policy's objects and the load's temporaries interleave,
    and which :func:`trim_heap` cannot shrink: ~25 MiB more per reload at
    100,000 rules. The gateway's threads only load configs and resolve names,
    so they never contend for the lock this shares.
    """
    if _libc is not None and hasattr(_libc, "mallopt"):
        _libc.mallopt(_M_ARENA_MAX, 1)


def _find_libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_libc = _find_libc()
_M_ARENA_MAX = -8  # glibc's malloc.h


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int] | None, ...]:
    """What changes when a file is edited, replaced, or swapped by a Kubernetes ConfigMap update."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
        else:
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


@dataclass
class Server:
    config_path: Path
    config: Config
    worker: int = 0
    workers: int = 1  # processes sharing the port (serve --workers N): what a reload may not make unsafe
    drain_timeout: float = 30.0
    reuse_port: bool = False
    watch: bool = True
    sock: socket.socket | None = None  # for tests and pre-fork parents: an already bound socket
    idle_timeout: float = IDLE_TIMEOUT

    def __post_init__(self) -> None:
        self.gateway = Gateway(self.config, worker=self.worker)
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._signature = _signature(self.config.files)
        # What the listening socket and the session store were opened with (RESTART_SECTIONS).
        self._opened = {name: getattr(self.config.settings, name) for name in RESTART_SECTIONS}
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def reload(self, trigger: str) -> bool:
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            before = self._signature = _signature(self.gateway.config.files)
            try:
                switch = sys.getswitchinterval()
                # The reload computes in a thread holding the GIL; at the default 5 ms switch interval
                # the event loop starves behind it (a 100,000-rule reload timed requests out). Hand
                # the GIL over more often while it runs.
                sys.setswitchinterval(0.0002)
                try:
                    # the running config's unchanged policy files are reused, not read again
                    config = await loop.run_in_executor(None, _load_config, self.config_path, self.gateway.config)
                finally:
                    sys.setswitchinterval(switch)
            except ConfigError as exc:
                return self._refused(trigger, [str(p) for p in exc.problems])
            except Exception as exc:  # never let a reload take the gateway down
                return self._refused(trigger, [repr(exc)])
            if (why := unshared_state(config.settings, workers=self.workers)) is not None:
                # A login section added while the cookie store's workers run: each would count on its own.
                del config
                return self._refused(trigger, [why])
            if _signature(self.gateway.config.files) != before:
                # A file changed while it was read: what was read may be half of it. The
                # watcher sees the change and loads the files once they settle.
                log.info("config.reload_deferred", trigger=trigger, reason="files changed while loading",
                         worker=self.worker)
                del config
                trim_heap()
                return False
            if config.settings.logging != self.gateway.config.settings.logging:  # before the events below
                logs.reconfigure(level=config.settings.logging.level, fmt=config.settings.logging.format)
            self.gateway.swap(config)
            self.config = config  # the config it started with would otherwise stay alive, whole
            # Only freeze the new policy: the old one has no reference cycles, so it is freed as the
            # last request using it ends, and a load makes no cyclic garbage (tests/policy/test_sources).
            # freeze_heap()'s full collection would walk both policies: ~2 s at 100,000 rules, on the loop.
            gc.freeze()
            trim_heap()
            loop.call_later(TRIM_AFTER_RELOAD, trim_heap)  # again once the requests using the old one are done
            RELOADS.labels("ok").inc()
            self._signature = _signature(config.files)
            log.info(
                "config.reloaded",
                trigger=trigger,
                rules=config.policy.rule_count,
                files=[str(f) for f in config.files],
                worker=self.worker,
            )
            for line in config.policy.expired_at_load:
                log.info("config.expired_entry", detail=line)
            if kept := [name for name in RESTART_SECTIONS if getattr(config.settings, name) != self._opened[name]]:
                # Said on every reload until a restart (or until the sections are as they were).
                log.warning("config.restart_needed", sections=kept, worker=self.worker,
                            detail=f"{' and '.join(kept)} changed: applied at the next restart, not by a reload")
            return True

    def _refused(self, trigger: str, errors: list[str]) -> bool:
        """A reload refused: the running policy stays; what the refused load read is handed back."""
        RELOADS.labels("failed").inc()
        log.error("config.reload_failed", trigger=trigger, errors=errors, worker=self.worker)
        trim_heap()  # (a big file's text and its cut: ~20 MiB at 100,000 rules)
        return False

    async def _watch(self) -> None:
        while not self._stop.is_set():
            await asyncio.sleep(WATCH_INTERVAL)
            if _signature(self.gateway.config.files) != self._signature:
                await self._settle()
                await self.reload("file_change")

    async def _settle(self) -> None:
        """Return once the watched files have stopped changing for SETTLE_TIME."""
        loop = asyncio.get_running_loop()
        last, quiet_since = _signature(self.gateway.config.files), loop.time()
        while loop.time() - quiet_since < SETTLE_TIME:
            await asyncio.sleep(SETTLE_POLL)
            now = _signature(self.gateway.config.files)
            if now != last:
                last, quiet_since = now, loop.time()

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        settings = self.config.settings
        one_malloc_arena()
        freeze_heap()
        tune_gc()
        self.runner = DirectRunner(
            self.gateway.app,
            handle_signals=False,
            shutdown_timeout=CANCEL_GRACE,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self.idle_timeout,
        )
        await self.runner.setup()
        ssl_context = None
        if settings.listen.tls_cert and settings.listen.tls_key:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(settings.listen.tls_cert, settings.listen.tls_key)
        site: web.BaseSite
        if self.sock is not None:
            site = web.SockSite(self.runner, self.sock, ssl_context=ssl_context, backlog=1024)
        else:
            site = web.TCPSite(
                self.runner,
                settings.listen.host,
                settings.listen.port,
                ssl_context=ssl_context,
                backlog=1024,
                reuse_port=self.reuse_port or None,
            )
        await site.start()
        self.port = self.runner.addresses[0][1]
        log.info(
            "gateway.started",
            listen=f"{settings.listen.host}:{self.port}",
            upstream=settings.upstream.url,
            mode=settings.mode,
            rules=self.config.policy.rule_count,
            worker=self.worker,
            pid=os.getpid(),
        )
        for line in self.config.policy.expired_at_load:
            log.info("config.expired_entry", detail=line)

    async def run(self) -> int:
        await self.start()
        return await self.serve_until_stopped()

    async def serve_until_stopped(self) -> int:
        """Handle signals and file changes until SIGTERM/SIGINT, then drain and exit 0."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload("sighup")))
        watcher = asyncio.ensure_future(self._watch()) if self.watch else None
        await self._stop.wait()
        log.info("gateway.draining", timeout=self.drain_timeout, worker=self.worker)
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await self.shutdown()
        log.info("gateway.stopped", worker=self.worker)
        return 0

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by drain_timeout), then close.

        The drain happens before aiohttp's own shutdown: that one stops reading from every
        connection at once, so an upload in flight would stall until the timeout and fail.
        """
        assert self.runner is not None
        for site in list(self.runner.sites):
            await site.stop()
        if not await self.gateway.drain(self.drain_timeout):
            log.warning("gateway.drain_timeout", in_flight=self.gateway.in_flight, timeout=self.drain_timeout,
                        worker=self.worker)
        await self.runner.cleanup()


class DirectRunner(web.AppRunner):
    """An AppRunner whose HTTP server hands every request straight to the gateway.

    The application has a single catch-all route. Resolving it on every request (a
    regex match, a match-info object) and aiohttp's per-request ``get_event_loop()``
    (a getpid() system call on Python 3.11) cost ~4% of a worker's CPU in the
    profile, for an answer that is always the same. The application's lifecycle
    (startup, cleanup_ctx, shutdown) is the AppRunner's, unchanged.
    """

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.request_handler = self.app[GATEWAY].serve  # type: ignore[assignment]
        return server


def install_event_loop_policy() -> None:
    """uvloop when installed: same semantics, faster I/O."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
