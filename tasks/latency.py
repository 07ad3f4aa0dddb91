"""The checklist's latency item from Prometheus: p50 and p99 (`histogram_quantile` over the
service's request-duration histogram) against its latency objective, so "slow" is a finding
across all requests, not only the health probes' few."""

from __future__ import annotations

from incidents.check_facts import LATENCY, LatencyFacts
from incidents.findings import Finding, unavailable
from integrations.errors import IntegrationError
from integrations.prometheus import Prometheus
from tasks.context import NotConfigured, RunContext
from tasks.steps import step

QUANTILES = (0.5, 0.99)


def quantile_ms(client: Prometheus, query: str) -> float | None:
    """The query's value in ms (None: no series, or NaN for no requests in the window)."""
    series = client.query(query)
    if not series or series[0][1] != series[0][1]:
        return None
    return round(series[0][1] * 1000, 1)


def latency_query(ctx: RunContext, quantile: float) -> str:
    prom = ctx.config.prometheus
    if prom is None:
        raise NotConfigured(f"environment {ctx.environment!r} has no prometheus settings")
    return prom.latency_query.format(service=ctx.service_name, quantile=quantile)


@step("latency-prometheus")
def prometheus_latency(ctx: RunContext) -> Finding:
    """p50 and p99 from Prometheus against the service's latency objective (latency_slo_ms)."""
    prom, slo = ctx.config.prometheus, ctx.service.latency_slo_ms
    if prom is None or slo is None:
        missing = "prometheus settings" if prom is None else f"a latency_slo_ms for {ctx.service_name}"
        return unavailable(LATENCY, NotConfigured(f"environment {ctx.environment!r} has no {missing}"))
    queries = [latency_query(ctx, q) for q in QUANTILES]
    try:
        with ctx.prometheus() as client:
            p50, p99 = (quantile_ms(client, q) for q in queries)
    except IntegrationError as exc:
        return unavailable(LATENCY, exc)
    if p99 is None:
        return Finding(LATENCY, None, "no requests in the query window", tuple(queries))
    summary = f"p50 {p50:g} ms, p99 {p99:g} ms against the {slo:g} ms objective"
    return Finding(LATENCY, p99 <= slo, summary, tuple(queries), LatencyFacts(p50_ms=p50, p99_ms=p99, slo_ms=slo))
