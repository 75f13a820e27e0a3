"""Request filters: one concept per module, all of the same shape.

A filter is an object with a ``name`` and an async ``__call__(exchange)`` that
either returns ``None`` (pass on to the next filter) or a response (the
request is answered here and goes no further). Filters never see aiohttp's
middleware protocol; :mod:`gateway.chain` runs them.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from gateway.exchange import Exchange


class Filter(Protocol):
    name: str

    async def __call__(self, ex: Exchange) -> web.StreamResponse | None: ...
