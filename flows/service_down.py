"""Playbook Scenario 1: Service Down (P0).

    1. Check health endpoints           -> probe /__ok, /health, /metrics
    2. Check recent deployments         -> ReplicaSet revisions + `gh run list`
    3. Immediate rollback if recent     -> rollback workflow dispatch or rollout undo, approved first
    4. Check logs                       -> `gh run view --log-failed` + pod logs
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State

from flows.database_issues import DATABASE_ISSUES
from incidents.alerts import DEFAULT_SEVERITY, AlertParameter
from incidents.check_facts import (
    CONFIG,
    DEPLOYS,
    HEALTH,
    LATENCY,
    NETWORK,
    NODES,
    POD_LOGS,
    ROLLOUT,
    RUN_LOGS,
    USAGE,
    VOLUMES,
)
from incidents.findings import Finding
from incidents.models import Incident, Severity
from incidents.plans import Plan
from incidents.service_down_rules import plan_service_down
from incidents.vocabulary import ActionKind
from tasks.cancellation import RunCancelled, ended_cancelled, record_cancellation
from tasks.context import RunContext
from tasks.deploys import verify_health
from tasks.diagnosis import (
    check_rollout,
    config_changes,
    failed_run_logs,
    gather,
    network_reach,
    pod_logs,
    probe_endpoints,
    recent_deployments,
)
from tasks.latency import prometheus_latency
from tasks.lifecycle import run_scenario
from tasks.nodes import node_conditions
from tasks.scenario import Scenario
from tasks.usage import resource_usage
from tasks.volumes import volume_usage


def diagnose(ctx: RunContext) -> dict[str, Finding]:
    """The independent checks, all at once."""
    futures = {
        HEALTH: probe_endpoints.submit(ctx.service.endpoints, ctx.config.timeouts.probe_seconds,
                                        ctx.service.latency_slo_ms),
        ROLLOUT: check_rollout.submit(ctx),
        DEPLOYS: recent_deployments.submit(ctx),
        RUN_LOGS: failed_run_logs.submit(ctx),
        POD_LOGS: pod_logs.submit(ctx),
        CONFIG: config_changes.submit(ctx),
        NETWORK: network_reach.submit(ctx),
        NODES: node_conditions.submit(ctx),
        USAGE: resource_usage.submit(ctx),
    }
    if ctx.config.prometheus and ctx.service.latency_slo_ms:  # else the probes' timings are the latency
        futures[LATENCY] = prometheus_latency.submit(ctx)
    if ctx.config.prometheus:  # the kubelet's volume stats are read there
        futures[VOLUMES] = volume_usage.submit(ctx)
    return gather(futures, timeout=120)


def plan(ctx: RunContext, incident: Incident, findings: dict[str, Finding], onset: datetime | None) -> Plan:
    return plan_service_down(incident.id, ctx.environment, ctx.service_name, ctx.service, findings, onset=onset,
                  release_window_seconds=ctx.config.timeouts.release_window_seconds)


def root_cause(findings: dict[str, Finding], plan: Plan) -> str:
    logs = findings.get(POD_LOGS)
    evidence = f" Pod logs: {logs.summary}" if logs and logs.ok is False else ""
    if plan.actions and plan.actions[0].kind == ActionKind.ROLLBACK:
        return f"A bad deployment: {plan.actions[0].before} failed to serve.{evidence}"
    if plan.actions and plan.actions[0].kind == ActionKind.SCALE:
        return f"The deployment was scaled to 0 replicas: nothing served ({plan.actions[0].before})."
    rollout = findings.get(ROLLOUT)
    return (
        f"Unhealthy pods without a recent deployment ({rollout.summary if rollout else 'no rollout data'}).{evidence}"
    )


def prevention(findings: dict[str, Finding], plan: Plan) -> str:
    if plan.actions and plan.actions[0].kind == ActionKind.ROLLBACK:
        return "Gate deploys on the health checks (readiness probes, canary) and fix the release before redeploying."
    if plan.actions and plan.actions[0].kind == ActionKind.SCALE:
        return "Guard the replica count (a minimum in the HPA or an admission policy against scaling to 0)."
    return "Find why the pods degraded (resources, dependencies) before it recurs; add an alert on restarts."


SERVICE_DOWN = Scenario(
    name="service-down", default_severity=DEFAULT_SEVERITY["service-down"], impact="Service unavailable to users",
    summary=lambda ctx: f"{ctx.service_name} is down", diagnose=diagnose, plan=plan,
    verify=lambda ctx, findings, plan: verify_health(ctx),
    root_cause=root_cause, prevention=prevention, handovers={DATABASE_ISSUES.name: DATABASE_ISSUES})


@flow(name="service-down", description="Playbook Scenario 1 (P0): a service is down. Diagnose, roll back or "
                                       "restart behind an approval, verify, resolve or escalate.",
      on_cancellation=[record_cancellation])
def service_down(service: str, environment: str = "sandbox", severity: Severity | None = None, dry_run: bool = False,
                 alert: AlertParameter | None = None) -> dict[str, Any] | State:
    """Args:
        service: the service name from the environment's config (e.g. api).
        environment: which environment's config to use.
        severity: P0..P3; defaults to P0 for a service that is down.
        dry_run: diagnose and plan, report the plan, change nothing, do not pause.
        alert: the alert that started the run, if any (Alertmanager/Grafana payload entry).
    """
    ctx = RunContext.load(environment, service)
    try:
        return run_scenario(SERVICE_DOWN, ctx, severity, dry_run, alert).as_dict()
    except RunCancelled as exc:  # a Cancel the worker had not acted on yet: the run ends Cancelled itself
        return ended_cancelled(exc)
