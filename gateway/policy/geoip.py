"""Country of a client address, from a MaxMind-format (``.mmdb``) database.

Two record shapes are read: MaxMind's ``{"country": {"iso_code": "GB"}}``
(falling back to ``registered_country`` when a record has no ``country``, as
MaxMind does for some anycast and satellite ranges) and the flat
``{"country_code": "GB"}`` of free databases. An address the database does not
know has no country (None): it matches only negated ``countries`` lists.

The whole file is read into memory (``MODE_MEMORY``): no file handle stays open,
so a reloaded policy can replace the old one without closing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.policy.model import IPAddress

_CACHE_LIMIT = 65536
_V6_OFFSET = 1 << 32


class GeoIPError(Exception):
    """The database cannot be opened or is not a MaxMind DB file."""


class GeoIP:
    """Address -> ISO 3166 alpha-2 code (upper case), or None."""

    def __init__(self, path: Path) -> None:
        import maxminddb  # only with a GeoIP database: a gateway without one never loads the reader

        self._errors: tuple[type[Exception], ...] = (ValueError, maxminddb.InvalidDatabaseError)
        try:
            self._reader: Any = maxminddb.open_database(str(path), maxminddb.MODE_MEMORY)
        except (OSError, *self._errors) as exc:
            raise GeoIPError(f"cannot open GeoIP database {str(path)!r}: {exc}") from None
        self.path = path
        # keyed by the address as an int (IPv6 offset past the IPv4 space): hashing
        # ipaddress objects costs more than the rest of a cached lookup
        self._cache: dict[int, str | None] = {}

    def country(self, address: IPAddress) -> str | None:
        return self.country_by_number(int(address), address.version == 4, address)

    def country_by_number(self, number: int, v4: bool, address: IPAddress) -> str | None:
        """:meth:`country` for callers that already hold ``int(address)``."""
        key = number if v4 else number + _V6_OFFSET
        try:
            return self._cache[key]
        except KeyError:
            pass
        code = self._lookup(address)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = code
        return code

    def _lookup(self, address: IPAddress) -> str | None:
        try:
            record = self._reader.get(address)
        except self._errors:
            # e.g. an IPv6 address asked of an IPv4-only database: unknown, not an error
            return None
        if not isinstance(record, dict):
            return None
        for key in ("country", "registered_country"):
            section = record.get(key)
            if isinstance(section, dict):
                code = section.get("iso_code")
                if isinstance(code, str) and len(code) == 2:
                    return code.upper()
        code = record.get("country_code")
        if isinstance(code, str) and len(code) == 2:
            return code.upper()
        return None
