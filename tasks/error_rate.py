"""High-error-rate checks and remedies (playbook Scenario 2)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from incidents.action_params import CircuitBreaker, Scale
from incidents.check_facts import (
    BREAKER,
    COMMITS,
    PROMETHEUS,
    RATE,
    BreakerFacts,
    CommitsFacts,
    PrometheusFacts,
    RateFacts,
    VersionTraffic,
)
from incidents.findings import Finding, unavailable
from incidents.plans import Grant, Plan, PlannedAction, require_grant
from integrations.errors import IntegrationError
from integrations.probes import sample_error_rate
from tasks.context import NotConfigured, RunContext, SecretNotFound
from tasks.deploys import ActionResult, RemediationFailed, Verification
from tasks.steps import run_logger, step

_ERRORS = (IntegrationError, SecretNotFound)


def _measure(ctx: RunContext) -> tuple[float, float, float]:
    """(rate, requests, errors) over the service's sample window, from /metrics."""
    service = ctx.service
    window, _ = sample_error_rate(service.url(service.metrics_path), service.errors.sample_seconds,
                                  ctx.config.timeouts.probe_seconds)
    return window.error_rate, window.requests, window.errors


@step("measure-error-rate")
def measure_error_rate(ctx: RunContext) -> Finding:
    """`curl /metrics | jq '.errors'`, twice, a window apart: the recent error rate."""
    service = ctx.service
    threshold = service.errors.threshold
    try:
        window, totals = sample_error_rate(
            service.url(service.metrics_path), service.errors.sample_seconds, ctx.config.timeouts.probe_seconds,
            threshold=threshold,
        )
    except Exception as exc:  # noqa: BLE001 - HTTP error, bad body: the check could not run
        return unavailable(RATE, f"{type(exc).__name__}: {exc}")
    rate, seconds = window.error_rate, window.seconds
    early = " (settled early: surely on one side of the threshold)" if seconds < service.errors.sample_seconds else ""
    summary = (f"{rate:.1%} of {window.requests:g} requests failed in {seconds:.1f} s (threshold {threshold:.1%})"
               + early)
    versions = {v: {"window_requests": r, "window_errors": e, "requests": totals.by_version[v][0],
                    "errors": totals.by_version[v][1]}
                for v, (r, e) in window.by_version.items() if v in totals.by_version}
    for v, (r, e) in totals.by_version.items():
        versions.setdefault(v, {"window_requests": 0.0, "window_errors": 0.0, "requests": r, "errors": e})
    details = tuple(f"version {v}: {c['window_errors']:g} errors of {c['window_requests']:g} requests in the window, "
                    f"{c['errors']:g} of {c['requests']:g} in all" for v, c in versions.items())
    return Finding(RATE, rate < threshold, summary, details,
                   RateFacts(rate=round(rate, 4), requests=window.requests, errors=window.errors,
                             rps=round(window.requests / seconds, 2),
                             versions={v: VersionTraffic(**c) for v, c in versions.items()}))


@step("prometheus-error-rate")
def prometheus_error_rate(ctx: RunContext) -> Finding:
    """The same ratio from Prometheus, when the environment configures one."""
    prom = ctx.config.prometheus
    if prom is None:
        return unavailable(PROMETHEUS, NotConfigured(f"environment {ctx.environment!r} has no prometheus settings"))
    query = prom.error_rate_query.format(service=ctx.service_name)
    with ctx.prometheus() as client:
        try:
            series = client.query(query)
        except IntegrationError as exc:
            return unavailable(PROMETHEUS, exc)
    if not series:
        return Finding(PROMETHEUS, None, "no data for the query yet", (query,))
    rate = series[0][1]
    if rate != rate:  # NaN: no requests in the window
        return Finding(PROMETHEUS, None, "no requests in the query window", (query,))
    threshold = ctx.service.errors.threshold
    return Finding(PROMETHEUS, rate < threshold, f"{rate:.1%} (threshold {threshold:.1%})", (query,),
                   PrometheusFacts(rate=round(rate, 4)))


@step("recent-commits")
def recent_commits(ctx: RunContext, limit: int = 10) -> Finding:
    """`git log --oneline -10` of the service's repository, within the recent window."""
    since = datetime.now(timezone.utc) - timedelta(hours=ctx.config.timeouts.recent_deploy_hours)
    repo = ctx.service.github.repo
    try:
        with ctx.github() as github:
            commits = github.recent_commits(repo, since=since, per_page=limit)
    except _ERRORS as exc:
        return unavailable(COMMITS, exc)
    lines = tuple(f"{c.sha[:7]} {c.headline} ({c.committed_at})" for c in commits)
    summary = f"{len(commits)} commits in {repo} in the last {ctx.config.timeouts.recent_deploy_hours:g} h"
    return Finding(COMMITS, True, summary, lines, CommitsFacts(count=len(commits)))


def _breaker_value(ctx: RunContext) -> str | None:
    breaker, ns = ctx.circuit_breaker(), ctx.service.kubernetes.namespace
    if breaker.configmap:
        with ctx.kubernetes() as kube:
            return kube.get_config_value(ns, breaker.configmap, breaker.key)
    with ctx.cache(breaker.redis_url_secret or "") as cache:
        return cache.get(breaker.key)


@step("check-circuit-breaker")
def check_circuit_breaker(ctx: RunContext) -> Finding:
    breaker = ctx.circuit_breaker()
    try:
        value = _breaker_value(ctx)
    except _ERRORS as exc:
        return unavailable(BREAKER, exc)
    return Finding(BREAKER, True, f"{breaker.key}={value}", data=BreakerFacts(value=value))


@step("scale-deployment")
def scale_deployment(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """kubectl scale to the planned replica count, if the deployment is still where the plan found it."""
    require_grant(grant, action)
    p = action.params_as(Scale)
    if p.hpa and p.max is not None:  # the HPA owns the replica count: move its bounds, not the deployment
        with ctx.kubernetes() as kube:
            kube.set_autoscaler_bounds(p.namespace, p.hpa, p.to, p.max)
        return ActionResult(action.describe(), True, f"HPA {p.hpa}: minReplicas {p.from_} -> {p.to}, "
                                                     f"maxReplicas {p.max}")
    with ctx.kubernetes() as kube:
        current = kube.deployment(p.namespace, p.deployment).replicas
        if current != p.from_:
            if current >= p.to:
                return ActionResult(action.describe(), False, f"already at {current} replicas: nothing to do")
            raise RemediationFailed(f"deployment has {current} replicas, not {p.from_} as planned: not scaled")
        before, after = kube.scale(p.namespace, p.deployment, p.to)
    return ActionResult(action.describe(), True, f"replicas {before} -> {after}")


@step("set-circuit-breaker")
def set_circuit_breaker(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """Turn the breaker switch on; the previous value goes into the result to turn it back."""
    require_grant(grant, action)
    p = action.params_as(CircuitBreaker)
    if p.configmap:
        with ctx.kubernetes() as kube:
            previous = kube.set_config_value(p.namespace, p.configmap, p.key, p.value)
    else:
        with ctx.cache(p.redis_url_secret or "") as cache:
            previous = cache.set(p.key, p.value)
    run_logger().info("circuit breaker %s: %s -> %s", p.key, previous, p.value)
    return ActionResult(action.describe(), previous != p.value,
                        f"{p.key}: {previous} -> {p.value} (turn back with {p.key}={previous})")


@step("verify-error-rate")
def verify_error_rate(ctx: RunContext, findings: dict[str, Finding], plan: Plan) -> Verification:
    """Sample the error rate until it is below the threshold, or the deadline."""
    timeouts, threshold = ctx.config.timeouts, ctx.service.errors.threshold
    start, last = time.monotonic(), "not measured"
    while True:
        try:
            rate, requests, _ = _measure(ctx)
            last = f"error rate {rate:.1%} of {requests:g} requests (threshold {threshold:.1%})"
            if rate < threshold and requests > 0:
                return Verification(True, time.monotonic() - start, last)
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = f"{type(exc).__name__}: {exc}"
        elapsed = time.monotonic() - start
        run_logger().info("verify: %s (%.0f s of %.0f s)", last, elapsed, timeouts.verify_seconds)
        if elapsed + timeouts.verify_poll_seconds + ctx.service.errors.sample_seconds > timeouts.verify_seconds:
            return Verification(False, elapsed, last)
        time.sleep(timeouts.verify_poll_seconds)
