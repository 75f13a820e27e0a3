"""A cache for functions of what a client sends: the same few values recur, but the client chooses them.

A browser sends the same path, cookie names and CRM cookie on request after request,
so caching what they compute to pays. Their length is the client's choice, though:
4,096 distinct 16 KiB keys would pin ~100 MiB. Keys longer than ``longest`` are
computed every time and never kept.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class ShortKeyCache(Generic[P, R]):
    """``func`` behind an LRU cache of ``maxsize`` entries, for first arguments of at most ``longest`` characters."""

    def __init__(self, func: Callable[Concatenate[str, P], R], *, maxsize: int, longest: int) -> None:
        functools.update_wrapper(self, func)
        self.func = func
        self.longest = longest
        self._cached: Any = functools.lru_cache(maxsize=maxsize)(func)

    def __call__(self, key: str, *args: P.args, **kwargs: P.kwargs) -> R:
        if len(key) > self.longest:
            return self.func(key, *args, **kwargs)
        result: R = self._cached(key, *args, **kwargs)
        return result

    def cache_info(self) -> functools._CacheInfo:
        return self._cached.cache_info()  # type: ignore[no-any-return]


def cache_short_keys(
    *, maxsize: int, longest: int
) -> Callable[[Callable[Concatenate[str, P], R]], ShortKeyCache[P, R]]:
    """Decorate a function of a client-chosen string with a :class:`ShortKeyCache`."""
    return lambda func: ShortKeyCache(func, maxsize=maxsize, longest=longest)
