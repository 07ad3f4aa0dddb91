"""What every route of the intake does before it trusts a request: read the body under a size
cap (streamed, so an unauthenticated sender cannot make it hold 64 MiB before the 413), refuse
a replayed signed request, and slow down credential guessing. The replay cache and the
throttle live in Redis, so several intake processes share them, and take each attempt
atomically, so parallel requests cannot slip past the count."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable

import redis.asyncio as aioredis
from starlette.requests import Request

from incidents.errors import RunbookError

TRUSTED_PROXIES_ENV = "RUNBOOKS_TRUSTED_PROXIES"


class TooLarge(RunbookError):
    def __init__(self, limit: int):
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, refused (TooLarge) as soon as it passes `limit` bytes: a declared
    Content-Length over the cap is refused before anything is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(limit)
    return bytes(body)


def client_address(request: Request, trusted: Callable[[], str | None] = lambda: os.environ.get(
        TRUSTED_PROXIES_ENV)) -> str:
    """The real client's address: the peer's, unless the peer is a trusted proxy
    (RUNBOOKS_TRUSTED_PROXIES, comma-separated CIDRs), in which case the right-most address of
    X-Forwarded-For that is not itself a trusted proxy (what the proxies saw, not what the
    client claims about itself)."""
    peer = request.client.host if request.client else "unknown"
    proxies = _networks(trusted() or "")
    if not proxies or not _inside(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _inside(hop, proxies):
            return hop
    return peer


def _networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


def _inside(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip.version == n.version and ip in n for n in networks)


class ReplayCache:
    """Signed requests seen within their validity window (Slack's 5 minutes): the second
    delivery of the same signature is a replay, acknowledged and not acted on."""

    def __init__(self, redis: Callable[[], aioredis.Redis], prefix: str = "runbooks:replay:"):
        self._redis, self._prefix = redis, prefix

    async def first(self, signature: str, ttl_seconds: int) -> bool:
        """True the first time a signature is seen; raises redis' errors (the caller answers 503)."""
        key = self._prefix + hashlib.sha256(signature.encode("utf-8", "surrogateescape")).hexdigest()
        return bool(await self._redis().set(key, b"1", nx=True, ex=ttl_seconds))


class Throttle:
    """Slows down guessing: an attempt is taken (atomically, in Redis) before the credential is
    looked at, and counts as in flight until it ends; a failed one then counts as a failure for
    `window` seconds. A key may have at most its allowance of failures plus attempts in flight,
    so parallel guesses are counted one by one and a correct answer costs nothing once done.
    Keys are chosen by the caller (the approval page: request token + approver name + real
    client address, and token + address), so a stranger's wrong guesses from elsewhere never
    lock the real approver out."""

    IN_FLIGHT_SECONDS = 30  # an attempt whose process died stops counting after this

    def __init__(self, redis: Callable[[], aioredis.Redis], window: int = 600, prefix: str = "runbooks:throttle:"):
        self._redis, self.window, self._prefix = redis, window, prefix

    def _key(self, key: str, part: str) -> str:
        return f"{self._prefix}{hashlib.sha256(key.encode('utf-8', 'surrogateescape')).hexdigest()}:{part}"

    async def reserve(self, keys: dict[str, int]) -> int:
        """Take one attempt under each key (key -> failures it allows); 0 when allowed, else the
        seconds until it may try again (nothing is then taken)."""
        pipe = self._redis().pipeline(transaction=True)
        for key in keys:
            pipe.incr(self._key(key, "flight"))
            pipe.expire(self._key(key, "flight"), self.IN_FLIGHT_SECONDS)
            pipe.get(self._key(key, "failed"))
        replies = await pipe.execute()
        counts = {key: (int(replies[3 * i]), int(replies[3 * i + 2] or 0)) for i, key in enumerate(keys)}
        over = [key for key, (flight, failed) in counts.items() if flight + failed > keys[key]]
        if not over:
            return 0
        await self.finish(list(keys), failed=False)
        if any(counts[key][1] >= keys[key] for key in over):  # failures: wait for the window
            ttls = [await self._redis().ttl(self._key(key, "failed")) for key in over]
            return max(1, *ttls)
        return 2  # only attempts in flight: a moment

    async def finish(self, keys: list[str], failed: bool) -> None:
        """An attempt ended; a failed one (a wrong credential) counts for the window."""
        pipe = self._redis().pipeline(transaction=True)
        for key in keys:
            pipe.decr(self._key(key, "flight"))
            if failed:
                pipe.incr(self._key(key, "failed"))
                pipe.expire(self._key(key, "failed"), self.window, nx=True)
        await pipe.execute()
