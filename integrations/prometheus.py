"""Prometheus's HTTP API: instant queries."""

from __future__ import annotations

from typing import Protocol, Self

import httpx

from integrations.errors import Closing, IntegrationError
from integrations.http import RetryPolicy, request
from integrations.http import client as http_client


class Prometheus(Protocol):
    """What the runbooks ask of Prometheus. PrometheusClient is the real one; the unit tier's
    fake (tests/fakes.py) implements the same, and mypy holds both to it."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]: ...


class PrometheusClient(Closing):
    def __init__(self, url: str, *, timeout: float = 5.0, retry: RetryPolicy = RetryPolicy(attempts=3),
                 transport: httpx.BaseTransport | None = None):
        """`transport`: a test's httpx.MockTransport; None sends to the network."""
        self._http = http_client(base_url=url.rstrip("/"), timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
                                 transport=transport)
        self.retry = retry

    def close(self) -> None:
        self._http.close()

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """An instant query; returns (labels, value) per series (a scalar as one unlabelled value)."""
        response = request(self._http, "POST", "/api/v1/query", what="Prometheus query", retry=self.retry,
                           data={"query": promql})
        body = response.json()
        if body.get("status") != "success":
            raise IntegrationError("Prometheus query", body.get("error", "query failed"))
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise IntegrationError("Prometheus query", f"expected a vector, got {data['resultType']}")
        return [(series.get("metric", {}), float(series["value"][1])) for series in data["result"]]
