"""Playbook Scenario 2: High Error Rate (P1).

    1. Check error metrics      -> /metrics (errors/requests over a window); Prometheus when configured
    2. Check recent changes     -> commits and deploy runs, ReplicaSet revisions
    3. Scale up if needed       -> kubectl scale, bounded by the service's maximum, approved first
    4. Enable circuit breakers  -> the service's switch, previous value recorded, approved first
    (and a rollback when a recent change lines up with the spike)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State

from flows.database_issues import DATABASE_ISSUES
from incidents.alerts import DEFAULT_SEVERITY, AlertParameter
from incidents.check_facts import (
    BREAKER,
    COMMITS,
    CONFIG,
    DEPLOYS,
    HEALTH,
    NETWORK,
    NODES,
    POD_LOGS,
    PROMETHEUS,
    RATE,
    ROLLOUT,
    USAGE,
    VOLUMES,
)
from incidents.error_rate_rules import plan_high_error_rate
from incidents.findings import Finding
from incidents.models import Incident, Severity
from incidents.plans import Plan
from incidents.vocabulary import ActionKind
from tasks.cancellation import RunCancelled, ended_cancelled, record_cancellation
from tasks.context import RunContext
from tasks.diagnosis import (
    check_rollout,
    config_changes,
    gather,
    network_reach,
    pod_logs,
    probe_endpoints,
    recent_deployments,
)
from tasks.error_rate import (
    check_circuit_breaker,
    measure_error_rate,
    prometheus_error_rate,
    recent_commits,
    verify_error_rate,
)
from tasks.lifecycle import run_scenario
from tasks.nodes import node_conditions
from tasks.scenario import Scenario
from tasks.usage import resource_usage
from tasks.volumes import volume_usage


def diagnose(ctx: RunContext) -> dict[str, Finding]:
    futures = {
        RATE: measure_error_rate.submit(ctx),
        HEALTH: probe_endpoints.submit([ctx.service.url(ctx.service.health_path)], ctx.config.timeouts.probe_seconds,
                                        ctx.service.latency_slo_ms),
        DEPLOYS: recent_deployments.submit(ctx),
        COMMITS: recent_commits.submit(ctx),
        ROLLOUT: check_rollout.submit(ctx),
        POD_LOGS: pod_logs.submit(ctx),  # the playbook's checklist: logs in every scenario
        CONFIG: config_changes.submit(ctx),
        NETWORK: network_reach.submit(ctx),
        NODES: node_conditions.submit(ctx),
        USAGE: resource_usage.submit(ctx),
    }
    if ctx.config.prometheus:
        futures[PROMETHEUS] = prometheus_error_rate.submit(ctx)
    if ctx.config.prometheus:  # the kubelet's volume stats are read there
        futures[VOLUMES] = volume_usage.submit(ctx)
    if ctx.service.circuit_breaker:
        futures[BREAKER] = check_circuit_breaker.submit(ctx)
    return gather(futures, timeout=120)


def plan(ctx: RunContext, incident: Incident, findings: dict[str, Finding], onset: datetime | None) -> Plan:
    return plan_high_error_rate(incident.id, ctx.environment, ctx.service_name, ctx.service, findings, onset=onset,
                  release_window_seconds=ctx.config.timeouts.release_window_seconds)


def root_cause(findings: dict[str, Finding], plan: Plan) -> str:
    if not plan.actions:
        return "Unknown: see the diagnosis."
    first = plan.actions[0]
    return {ActionKind.ROLLBACK: f"A bad change: {first.before} raised the error rate.",
            ActionKind.CIRCUIT_BREAKER: "A failing dependency made requests fail.",
            ActionKind.SCALE: "Load above the service's capacity."}.get(first.kind, "Unknown: see the diagnosis.")


def prevention(findings: dict[str, Finding], plan: Plan) -> str:
    if not plan.actions:
        return "Review in the post-mortem."
    return {
        ActionKind.ROLLBACK: "Canary releases gated on the error rate.",
        ActionKind.CIRCUIT_BREAKER: "Keep the breaker automatic, with a timeout budget for the dependency.",
        ActionKind.SCALE: "An autoscaler on request rate, with headroom above peak load.",
    }.get(plan.actions[0].kind, "Review in the post-mortem.")


HIGH_ERROR_RATE = Scenario(
    name="high-error-rate",
    default_severity=DEFAULT_SEVERITY["high-error-rate"],
    impact="A share of user requests fail",
    summary=lambda ctx: f"high error rate on {ctx.service_name}",
    diagnose=diagnose,
    plan=plan,
    verify=verify_error_rate,
    root_cause=root_cause,
    prevention=prevention,
    handovers={DATABASE_ISSUES.name: DATABASE_ISSUES},
)


@flow(name="high-error-rate", description="Playbook Scenario 2 (P1): high error rate. Measure it, look at recent "
                                          "changes and capacity; roll back, open the circuit breaker or scale up "
                                          "behind an approval; verify the rate falls below the threshold.",
      on_cancellation=[record_cancellation])
def high_error_rate(service: str, environment: str = "sandbox", severity: Severity | None = None,
                    dry_run: bool = False, alert: AlertParameter | None = None) -> dict[str, Any] | State:
    """Args:
        service: the service whose error rate is high.
        environment: which environment's config to use.
        severity: P0..P3; defaults to P1.
        dry_run: diagnose and plan, report the plan, change nothing, do not pause.
        alert: the alert that started the run, if any.
    """
    ctx = RunContext.load(environment, service)
    try:
        return run_scenario(HIGH_ERROR_RATE, ctx, severity, dry_run, alert).as_dict()
    except RunCancelled as exc:  # a Cancel the worker had not acted on yet: the run ends Cancelled itself
        return ended_cancelled(exc)
