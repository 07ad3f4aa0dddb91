"""Redis as a service's cache: health, and clearing it — a targeted delete by key prefix
(SCAN + UNLINK) by default, FLUSHDB only when asked. FLUSHALL is not offered here at all."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, Self

import redis

from integrations.errors import Closing, IntegrationError, Refused, TimedOut, Unreachable

_PREFIX = re.compile(r"^[A-Za-z0-9_.:\-]{2,100}$")


@dataclass(frozen=True)
class CacheHealth:
    used_memory: int
    maxmemory: int
    connected_clients: int
    evicted_keys: int
    keys: int

    @property
    def memory_ratio(self) -> float | None:
        return self.used_memory / self.maxmemory if self.maxmemory else None


def validate_prefix(prefix: str) -> str:
    """A prefix must be specific: no glob characters, at least two characters."""
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise ValueError(f"invalid cache key prefix {prefix!r}: letters, digits and _ . : - only, 2-100 characters")
    return prefix


def _error(what: str, exc: redis.RedisError) -> IntegrationError:
    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, redis.TimeoutError):
        return TimedOut(what, reason, transient=True)
    if isinstance(exc, redis.ConnectionError):
        return Unreachable(what, reason, transient=True)
    return Refused(what, reason)


class Cache(Protocol):
    """What the runbooks ask of a service's Redis. CacheClient is the real one; the unit tier's
    fake (tests/fakes.py) implements the same, and mypy holds both to it."""

    where: str  # host:port/db, for what a person reads

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def health(self) -> CacheHealth: ...

    def count_prefix(self, prefix: str) -> int: ...

    def delete_prefix(self, prefix: str, batch: int = 500) -> int: ...

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> str | None: ...

    def flushdb(self) -> None: ...


class CacheClient(Closing):
    def __init__(self, url: str, *, timeout: float = 3.0):
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        kwargs = self._client.connection_pool.connection_kwargs
        self.where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except redis.RedisError as exc:
            raise _error(f"Redis {self.where} ({what})", exc) from None

    def health(self) -> CacheHealth:
        memory = self._call("INFO memory", self._client.info, "memory")
        clients = self._call("INFO clients", self._client.info, "clients")
        stats = self._call("INFO stats", self._client.info, "stats")
        return CacheHealth(int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0)),
                           int(clients.get("connected_clients", 0)), int(stats.get("evicted_keys", 0)),
                           int(self._call("DBSIZE", self._client.dbsize)))

    def _scan(self, prefix: str, batch: int) -> Iterator[Any]:
        """The keys under `prefix`; SCAN runs as the keys are consumed, so its errors are
        turned into IntegrationError here, where they happen."""
        keys = self._client.scan_iter(f"{validate_prefix(prefix)}*", batch)
        while True:
            try:
                key = next(keys)
            except StopIteration:
                return
            except redis.RedisError as exc:
                raise _error(f"Redis {self.where} (SCAN)", exc) from None
            yield key

    def count_prefix(self, prefix: str) -> int:
        return sum(1 for _ in self._scan(prefix, 500))

    def delete_prefix(self, prefix: str, batch: int = 500) -> int:
        """UNLINK every key under `prefix`; returns how many were removed."""
        removed, pending = 0, []
        for key in self._scan(prefix, batch):
            pending.append(key)
            if len(pending) >= batch:
                removed += self._call("UNLINK", self._client.unlink, *pending)
                pending = []
        if pending:
            removed += self._call("UNLINK", self._client.unlink, *pending)
        return removed

    def get(self, key: str) -> str | None:
        value = self._call("GET", self._client.get, key)
        return value.decode() if isinstance(value, bytes) else value

    def set(self, key: str, value: str) -> str | None:
        """Set a flag; returns the previous value."""
        previous = self._call("SET", functools.partial(self._client.set, key, value, get=True))
        return previous.decode() if isinstance(previous, bytes) else previous

    def flushdb(self) -> None:
        self._call("FLUSHDB", self._client.flushdb)
