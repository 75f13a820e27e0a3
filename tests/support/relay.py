"""A TCP relay in front of a real redis-server that can misbehave the way a network can.

It runs in a thread of its own with a selector, independent of the event loop under test.

- ``freeze_tracking()``: stop relaying, both ways, on the connections open now that sent
  ``CLIENT TRACKING``, sockets left open: a partition of just those connections (no FIN, no RST,
  nothing arrives); what they send meanwhile is held back, and ``thaw()`` delivers it (the
  partition heals, TCP resends); ``freeze_open()`` does the same to every connection open now;
- ``close_after_subscribe``: relay the SUBSCRIBE confirmation, then close the client's side in the
  same breath (FIN, or RST with ``rst``): a Redis that drops the connection right after confirming.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading


class RedisRelay:
    def __init__(self, upstream_port: int, *, close_after_subscribe: bool = False, rst: bool = False) -> None:
        self.upstream_port = upstream_port
        self.close_after_subscribe = close_after_subscribe
        self.rst = rst
        self.subscribes_cut = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._tracking: set[int] = set()  # id() of both sockets of connections that sent CLIENT TRACKING
        self._frozen: set[int] = set()
        self._open: set[int] = set()  # id() of every relayed socket
        self._held: dict[int, tuple[socket.socket, bytearray]] = {}  # id(src) -> (dst, bytes held back)
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._stop = False
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def freeze_tracking(self) -> None:
        with self._lock:
            self._frozen = set(self._tracking)

    def freeze_open(self) -> None:
        """Freeze every connection open now (over TLS the relay cannot tell which one tracks)."""
        with self._lock:
            self._frozen = set(self._open)

    def thaw(self) -> None:
        with self._lock:
            self._frozen = set()

    def _drop(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            sock.close()

    def _loop(self) -> None:
        while not self._stop:
            with self._lock:
                if not self._frozen and self._held:
                    for dst, held in self._held.values():
                        with contextlib.suppress(OSError):
                            dst.sendall(held)
                    self._held.clear()
            for key, _ in self._sel.select(0.05):
                if key.data is None:
                    try:
                        client, _ = self._listener.accept()
                    except OSError:
                        continue
                    upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                    with self._lock:
                        self.connections += 1
                        self._open |= {id(client), id(upstream)}
                    client.setblocking(True)
                    self._sel.register(client, selectors.EVENT_READ, (upstream, False))
                    self._sel.register(upstream, selectors.EVENT_READ, (client, True))
                    continue
                src = key.fileobj
                assert isinstance(src, socket.socket)
                dst, from_redis = key.data
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    self._drop(src, dst)
                    continue
                with self._lock:
                    if not from_redis and b"TRACKING" in data:
                        self._tracking |= {id(src), id(dst)}
                    if id(src) in self._frozen:  # held back, as TCP holds unacknowledged segments
                        self._held.setdefault(id(src), (dst, bytearray()))[1].extend(data)
                        continue
                with contextlib.suppress(OSError):
                    dst.sendall(data)
                if from_redis and self.close_after_subscribe and b"subscribe\r\n" in data:
                    self.subscribes_cut += 1
                    if self.rst:
                        dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self._drop(dst, src)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
