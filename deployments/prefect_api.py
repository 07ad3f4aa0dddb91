"""The Prefect REST API as the project's own services and tools call it: the CLI, the intake,
the approval page and the dev stack. One place decides the base URL (`PREFECT_API_URL`), the
credentials, a timeout on every call and the project's one retry rule (integrations/http.py:
connect errors, 429 and 5xx, Retry-After honoured).

Credentials are Prefect's own settings, sent as Prefect's client sends them: `PREFECT_API_KEY`
(Prefect Cloud, or a server behind a proxy that wants a key) as `Authorization: Bearer <key>`;
otherwise `PREFECT_API_AUTH_STRING` (a self-hosted server started with the same
`PREFECT_SERVER_API_AUTH_STRING`) as HTTP Basic credentials. With both set, the key wins, as in
Prefect's client.

Flows and the worker use Prefect's own client (`prefect.client`); these callers run outside
Prefect's settings and context (a web service, a shell command) and want plain JSON, short
timeouts and our retry rule, so they use this instead."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from integrations.errors import IntegrationError
from integrations.http import RetryPolicy, arequest, request

DEFAULT_URL = "http://127.0.0.1:4200/api"
TIMEOUT = httpx.Timeout(10.0, connect=3.0)
ONCE = RetryPolicy(attempts=1)  # for a caller that decides itself what a failure means


def api_url(url: str | None = None) -> str:
    return (url or os.environ.get("PREFECT_API_URL") or DEFAULT_URL).rstrip("/")


def auth_headers() -> dict[str, str]:
    key = os.environ.get("PREFECT_API_KEY")
    if key:
        return {"Authorization": f"Bearer {key}"}
    secret = os.environ.get("PREFECT_API_AUTH_STRING")
    if not secret:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(secret.encode()).decode()}


def credentials_in_use() -> str:
    """Which credential a refused call sent, by name only (never its value)."""
    if os.environ.get("PREFECT_API_KEY"):
        return "PREFECT_API_KEY"
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        return "PREFECT_API_AUTH_STRING"
    return "no credentials (set PREFECT_API_KEY or PREFECT_API_AUTH_STRING)"


def explain(exc: IntegrationError) -> str:
    """What a failed call means to whoever runs it: a refused credential is named as such."""
    if exc.status in (401, 403):
        return (f"the Prefect API at {api_url()} refused the credentials (HTTP {exc.status}, sent "
                f"{credentials_in_use()}): check PREFECT_API_KEY / PREFECT_API_AUTH_STRING")
    return str(exc)


class RunControls(Protocol):
    """What the approval page asks of Prefect about one run: read it, read its input, resume it.
    PrefectApi is the real one; a test hands in its own (tests/test_answer_before_pause_unit.py)."""

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response: ...

    def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> httpx.Response: ...

    def flow_run(self, flow_run_id: str) -> dict[str, Any]: ...


class PrefectApi:
    """Blocking calls (the CLI, the approval page, the dev stack). Each call opens its own
    connection, so one instance may be shared between threads."""

    def __init__(self, url: str | None = None, *, timeout: float | httpx.Timeout = TIMEOUT,
                 retry: RetryPolicy = ONCE, on_retry: Callable[[str, float], None] | None = None,
                 transport: httpx.BaseTransport | None = None):
        self.url = api_url(url)
        self._timeout = timeout
        self._retry = retry
        self._on_retry = on_retry
        self._transport = transport  # a test's httpx.MockTransport; None: the network

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        """The response (2xx/3xx, or a status in `ok`); IntegrationError naming the call otherwise."""
        with httpx.Client(base_url=self.url, headers=auth_headers(), timeout=self._timeout,
                          transport=self._transport) as client:
            return request(client, method, path, what=f"Prefect API {method} {path}", retry=self._retry, ok=ok,
                           on_retry=self._on_retry, **kwargs)

    def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> httpx.Response:
        """Hand a paused run its input. Prefect answers 200 with `status` ACCEPT, REJECT or ABORT."""
        return self.call("POST", f"/flow_runs/{flow_run_id}/resume", json={"run_input": run_input})

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/flow_runs/{flow_run_id}").json())


class AsyncPrefectApi:
    """The same for the intake's event loop: one pooled connection set for the service's life."""

    def __init__(self, url: str | None = None, *, timeout: float | httpx.Timeout = TIMEOUT,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.url = api_url(url)
        self._client = httpx.AsyncClient(base_url=self.url, headers=auth_headers(), timeout=timeout,
                                         transport=transport)

    async def call(self, method: str, path: str, *, retry: RetryPolicy = ONCE, ok: tuple[int, ...] = (),
                   what: str | None = None, **kwargs: Any) -> httpx.Response:
        return await arequest(self._client, method, path, what=what or f"Prefect API {method} {path}", retry=retry,
                              ok=ok, **kwargs)

    async def aclose(self) -> None:
        await self._client.aclose()
