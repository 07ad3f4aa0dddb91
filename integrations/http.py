"""HTTP with timeouts and bounded retries on what is worth retrying: connect errors and
timeouts, 429 (honouring Retry-After) and 5xx."""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Callable

import httpx

from integrations.errors import IntegrationError, gave_up, refusal

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """The verifying TLS context httpx builds for every new client (certifi's bundle, or
    SSL_CERT_FILE / SSL_CERT_DIR), built once: loading the CA bundle costs tens of ms of CPU,
    and the runbooks open a client per step. An SSLContext is safe to share between threads."""
    return httpx.create_ssl_context()


def client(**kwargs: Any) -> httpx.Client:
    """An httpx.Client on the shared TLS context."""
    return httpx.Client(verify=tls_context(), **kwargs)


# httpx's module-level functions (httpx.get, httpx.post, ...) make a client for each call, and
# with it a TLS context from certifi's bundle: ~30 ms of CPU a call on a 2-core machine, also
# over plain http, where no certificate is ever checked. These are the same one-off requests
# (a client of their own, no connection kept, the same defaults) on the shared context: for the
# sandbox's controls, the stack's readiness checks and the test suite's polling loops.


def get(url: str, **kwargs: Any) -> httpx.Response:
    return _once("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return _once("POST", url, **kwargs)


def patch(url: str, **kwargs: Any) -> httpx.Response:
    return _once("PATCH", url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return _once("DELETE", url, **kwargs)


def _once(method: str, url: str, **kwargs: Any) -> httpx.Response:
    with client() as one_off:
        return one_off.request(method, url, **kwargs)


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    backoff: float = 0.5  # seconds, doubled per attempt
    max_wait: float = 30.0  # never sleep longer than this for one Retry-After

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None and "Retry-After" not in response.headers and _limit_spent(response):
            reset = response.headers.get("X-RateLimit-Reset", "")  # epoch seconds (GitHub's primary limit)
            if reset.isdigit():
                return min(max(int(reset) - time.time(), 0.0), self.max_wait)
        return self.pause(attempt, response.headers.get("Retry-After") if response is not None else None)

    def pause(self, attempt: int, retry_after: str | None) -> float:
        """How long to wait before the next attempt: the server's Retry-After (seconds or an
        HTTP date) when it sent one, else the doubling backoff; never more than max_wait.
        Every client (HTTP, Kubernetes) uses this one rule."""
        if retry_after:
            return min(_parse_retry_after(str(retry_after)), self.max_wait)
        return min(self.backoff * 2.0 ** (attempt - 1), self.max_wait)


def _parse_retry_after(value: str) -> float:
    try:
        return max(float(value), 0.0)
    except ValueError:
        try:
            return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError):
            return 1.0


def is_transient(status: int) -> bool:
    return status == 429 or status >= 500


def _limit_spent(response: httpx.Response) -> bool:
    return bool(response.headers.get("X-RateLimit-Remaining") == "0")


def rate_limited(response: httpx.Response) -> bool:
    """A 429; or a 403 that is a rate limit, as GitHub sends its primary and secondary limits
    (docs.github.com, "Rate limits for the REST API": a 403 or 429 with Retry-After, or with
    X-RateLimit-Remaining 0 and X-RateLimit-Reset). Either way the request was not acted on."""
    if response.status_code == 429:
        return True
    return response.status_code == 403 and ("Retry-After" in response.headers or _limit_spent(response))


def worth_retrying(response: httpx.Response) -> bool:
    """5xx and rate limits: a refusal only until the server recovers or the limit resets."""
    return is_transient(response.status_code) or rate_limited(response)


def refused(what: str, response: httpx.Response) -> IntegrationError:
    """The error for an answer that refused the request (its status and the first of its message)."""
    return refusal(what, f"HTTP {response.status_code}: {_short(response)}", response.status_code)


def request(client: httpx.Client, method: str, url: str, *, what: str, retry: RetryPolicy = RetryPolicy(),
            ok: tuple[int, ...] = (), on_retry: Callable[[str, float], None] | None = None,
            **kwargs: Any) -> httpx.Response:
    """Send one request with retries; raise IntegrationError naming `what` unless it succeeds.

    A 2xx/3xx response, or one whose status is in `ok`, is returned as is. `on_retry(why,
    seconds)` hears of each new try before the pause (a terminal says so).
    """
    last, timed_out = "", False
    for attempt in range(1, retry.attempts + 1):
        response = None
        try:
            response = client.request(method, url, **kwargs)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            last, timed_out = f"{type(exc).__name__}: {exc or 'no response'}", isinstance(exc, httpx.TimeoutException)
        else:
            if response.status_code < 400 or response.status_code in ok:
                return response
            last = f"HTTP {response.status_code}: {_short(response)}"
            if not worth_retrying(response):
                raise refused(what, response)
        if attempt == retry.attempts:
            break
        pause = retry.delay(attempt, response)
        if on_retry is not None:
            on_retry(last, pause)
        time.sleep(pause)
    raise gave_up(what, f"{last} (after {retry.attempts} attempts)",
                  response.status_code if response is not None else None, timed_out=timed_out)


async def arequest(client: httpx.AsyncClient, method: str, url: str, *, what: str, retry: RetryPolicy = RetryPolicy(),
                   ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
    """`request` for asyncio: the same retries, the same rule for Retry-After, the same errors."""
    last, timed_out = "", False
    response: httpx.Response | None = None
    for attempt in range(1, retry.attempts + 1):
        response = None
        try:
            response = await client.request(method, url, **kwargs)
        except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            last, timed_out = f"{type(exc).__name__}: {exc or 'no response'}", isinstance(exc, httpx.TimeoutException)
        else:
            if response.status_code < 400 or response.status_code in ok:
                return response
            last = f"HTTP {response.status_code}: {_short(response)}"
            if not worth_retrying(response):
                raise refusal(what, last, response.status_code)
        if attempt < retry.attempts:
            await asyncio.sleep(retry.delay(attempt, response))
    raise gave_up(what, f"{last} (after {retry.attempts} attempts)",
                  response.status_code if response is not None else None, timed_out=timed_out)


def _short(response: httpx.Response) -> str:
    try:
        data = response.json()
        message = data.get("message") or data.get("error") if isinstance(data, dict) else None
        if message:
            return str(message)[:200]
    except ValueError:
        pass
    return response.text[:200].strip() or response.reason_phrase
