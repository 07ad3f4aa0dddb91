"""Can a host be reached, and if not, how not: the playbook's network and DNS check.

`reach` tells "does not resolve" from "refused" from "timed out" from "answers with an error":
a dependency that is down answers 503 or refuses; a name that does not resolve or a network
that drops packets is a different fault, with a different owner. Every step has a timeout.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from integrations import parallel
from integrations.http import client as http_client

OK, HTTP_ERROR, UNRESOLVABLE, REFUSED, TIMED_OUT, UNREACHABLE = (
    "ok", "http_error", "unresolvable", "refused", "timed_out", "unreachable")


@dataclass(frozen=True)
class Reach:
    name: str
    url: str
    outcome: str  # ok | http_error | unresolvable | refused | timed_out | unreachable
    detail: str
    seconds: float
    status: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK


def _resolve(host: str, port: int, timeout: float) -> None:
    """getaddrinfo has no timeout of its own: it runs on a daemon thread that is given up on
    (nor does a process that is told to stop wait for it)."""
    looked_up = parallel.submit_all(lambda _: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM), [None],
                                    name="resolve")
    parallel.result(looked_up[0], timeout=timeout)


def _connect(host: str, port: int, timeout: float) -> tuple[str, str] | None:
    """None when a TCP connection opens, else (outcome, detail)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return REFUSED, f"{host}:{port} refused the connection"
    except (TimeoutError, socket.timeout):
        return TIMED_OUT, f"no TCP connection to {host}:{port} within {timeout:g} s"
    except OSError as exc:
        return UNREACHABLE, f"{host}:{port}: {exc.strerror or exc}"


def reach(name: str, url: str, timeout: float = 3.0) -> Reach:
    """Resolve the URL's host, connect to it, then GET the URL; the first step that fails says how."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    start = time.monotonic()

    def done(outcome: str, detail: str, status: int | None = None) -> Reach:
        return Reach(name, url, outcome, detail, time.monotonic() - start, status)

    try:
        _resolve(host, port, timeout)
    except socket.gaierror as exc:
        return done(UNRESOLVABLE, f"{host} does not resolve ({exc.strerror})")
    except parallel.Stopping as exc:
        return done(UNREACHABLE, f"not checked: {exc}")
    except FutureTimeout:
        return done(TIMED_OUT, f"resolving {host} took more than {timeout:g} s")
    refused = _connect(host, port, timeout)
    if refused is not None:
        return done(*refused)
    try:
        with http_client(timeout=httpx.Timeout(timeout)) as client:
            response = client.get(url)
    except httpx.TimeoutException:
        return done(TIMED_OUT, f"no HTTP answer from {host} within {timeout:g} s")
    except httpx.HTTPError as exc:
        return done(UNREACHABLE, f"{type(exc).__name__}: {exc}")
    if response.status_code < 400:
        return done(OK, f"HTTP {response.status_code} in {(time.monotonic() - start) * 1000:.0f} ms",
                    response.status_code)
    return done(HTTP_ERROR, f"answers HTTP {response.status_code}", response.status_code)
