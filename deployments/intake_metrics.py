"""The alert intake's /metrics, in Prometheus's text format: alerts received by source and
outcome, request latency, errors of what the intake depends on, and the approvals waiting
(read from the incident store at each scrape, so every replica shows the same figures:
aggregate them with max). docs/observability.md lists every name."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from incidents.store import IncidentStore, StoreError
from incidents.store_approvals import WaitingApprovals

_log = logging.getLogger("runbooks.intake")

# what became of each alert an intake received
OUTCOMES = ("started", "joined", "duplicate", "resolved", "unmatched", "unknown", "refused", "error")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class IntakeMetrics:
    """The intake's own registry (one per app, so that tests can build several)."""

    def __init__(self, waiting: Callable[[], list[WaitingApprovals]] | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.alerts = Counter("runbooks_alerts_received", "Alerts received, by source and what became of them",
                              ["source", "outcome"], registry=self.registry)
        self.latency = Histogram("runbooks_intake_request_seconds", "Time to answer a request, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dependency_errors = Counter("runbooks_intake_dependency_errors",
                                         "Requests answered 503 because Prefect, Redis or the store failed",
                                         ["dependency"], registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.approvals = ApprovalsCollector(waiting or (lambda: IncidentStore().approvals_waiting()))
        self.registry.register(self.approvals)

    def counted(self, source: str, outcome: dict[str, Any], alerts: int) -> None:
        """One answered alert POST's outcome (the intake's JSON answer), counted per alert."""
        for name, key in (("started", "started"), ("joined", "joined")):
            self.alerts.labels(source, name).inc(len(outcome.get(key, [])))
        for name, key in (("duplicate", "duplicates"), ("resolved", "resolved"), ("unmatched", "unmatched")):
            self.alerts.labels(source, name).inc(outcome.get(key, 0))
        self.alerts.labels(source, "unknown").inc(len(outcome.get("unknown", [])))
        counted = sum(len(outcome.get(k, [])) for k in ("started", "joined", "unknown")) + sum(
            outcome.get(k, 0) for k in ("duplicates", "resolved", "unmatched"))
        if alerts > counted:  # resolved alerts that found no open incident
            self.alerts.labels(source, "resolved").inc(alerts - counted)

    def refused(self, source: str, alerts: int = 1) -> None:
        """A POST refused before its alerts were looked at (token, size, JSON, payload)."""
        self.alerts.labels(source, "refused").inc(alerts)

    def failed(self, source: str, dependency: str, alerts: int) -> None:
        self.alerts.labels(source, "error").inc(alerts)
        self.dependency_errors.labels(dependency).inc()

    async def serve(self, request: Request) -> Response:
        body = await run_in_threadpool(generate_latest, self.registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


class ApprovalsCollector(Collector):
    """The approvals waiting, per environment, read from the store at each scrape. A store that
    cannot be read leaves them out of that scrape (and counts a store error)."""

    def __init__(self, waiting: Callable[[], list[WaitingApprovals]]):
        self.waiting = waiting
        self.store_errors = 0

    def describe(self) -> list[Any]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[GaugeMetricFamily]:
        waiting = GaugeMetricFamily("runbooks_approvals_waiting", "Approvals nobody has answered yet",
                                    labels=["environment"])
        overdue = GaugeMetricFamily("runbooks_approvals_overdue", "Unanswered approvals past their deadline",
                                    labels=["environment"])
        oldest = GaugeMetricFamily("runbooks_approval_oldest_age_seconds",
                                   "How long the oldest unanswered approval has waited", labels=["environment"])
        try:
            rows = self.waiting()
        except StoreError as exc:
            self.store_errors += 1
            _log.warning("approvals waiting not read for /metrics: %s", exc)
            rows = []
        for row in rows:
            waiting.add_metric([row.environment], row.waiting)
            overdue.add_metric([row.environment], row.overdue)
            oldest.add_metric([row.environment], row.oldest_seconds)
        errors = GaugeMetricFamily("runbooks_intake_store_read_errors",
                                   "Scrapes that could not read the approvals from the store")
        errors.add_metric([], self.store_errors)
        yield from (waiting, overdue, oldest, errors)


class Timed:
    """ASGI middleware: each request's time, by route (its path up to a token or id)."""

    def __init__(self, app: ASGIApp, metrics: IntakeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.metrics.latency.labels(route_of(scope["path"])).observe(time.perf_counter() - start)


_ROUTES = ("/alerts/alertmanager", "/alerts/grafana", "/alerts", "/slack/interactions", "/pagerduty/webhooks",
           "/approvals", "/healthz", "/readyz", "/metrics")


def route_of(path: str) -> str:
    """A bounded label: the known route a path falls under (an approval's token is left out)."""
    return next((route for route in _ROUTES if path == route or path.startswith(route + "/")), "other")
