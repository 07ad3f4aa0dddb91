"""Playbook Scenario 3: Database Issues (P1).

    1. Check database health        -> /health checks.database, pg_isready equivalent
    2. Check connection pool        -> pg_stat_activity: connections, idle in transaction,
                                       long queries, blocking chains; replication; the cache
    3. Restart database if needed   -> rollout restart of the database deployment, approved first
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State

from incidents.alerts import DEFAULT_SEVERITY, AlertParameter
from incidents.check_facts import CACHE, CONNECTIONS, HEALTH, POD_LOGS, REACH, REPLICATION, SESSIONS
from incidents.database_rules import plan_database_issues
from incidents.findings import Finding
from incidents.models import Incident, Severity
from incidents.plans import Plan
from incidents.vocabulary import ActionKind
from tasks.cancellation import RunCancelled, ended_cancelled, record_cancellation
from tasks.context import RunContext
from tasks.database import (
    check_cache,
    check_connections,
    check_reachable,
    check_replication,
    check_sessions,
    verify_database,
)
from tasks.diagnosis import gather, pod_logs, probe_endpoints
from tasks.lifecycle import run_scenario
from tasks.scenario import Scenario


def diagnose(ctx: RunContext) -> dict[str, Finding]:
    futures = {
        HEALTH: probe_endpoints.submit([ctx.service.url(ctx.service.health_path)], ctx.config.timeouts.probe_seconds,
                                        ctx.service.latency_slo_ms),
        REACH: check_reachable.submit(ctx),
        CONNECTIONS: check_connections.submit(ctx),
        SESSIONS: check_sessions.submit(ctx),
        REPLICATION: check_replication.submit(ctx),
        POD_LOGS: pod_logs.submit(ctx),  # the playbook's checklist: logs in every scenario
    }
    if ctx.service.cache:
        futures[CACHE] = check_cache.submit(ctx)
    return gather(futures, timeout=120)


def plan(ctx: RunContext, incident: Incident, findings: dict[str, Finding], onset: datetime | None) -> Plan:
    return plan_database_issues(incident.id, ctx.environment, ctx.service_name, ctx.service, findings)


def root_cause(findings: dict[str, Finding], plan: Plan) -> str:
    causes = [f"{f.check}: {f.summary}" for f in findings.values() if f.ok is False]
    return "; ".join(causes) or "no failing check"


def prevention(findings: dict[str, Finding], plan: Plan) -> str:
    kinds = {a.kind for a in plan.actions}
    advice = []
    if ActionKind.TERMINATE_SESSIONS in kinds:
        advice.append("set idle_in_transaction_session_timeout and lock_timeout for the application role")
    if ActionKind.CANCEL_QUERIES in kinds:
        advice.append("set statement_timeout and index the slow query")
    if ActionKind.CLEAR_CACHE in kinds:
        advice.append("set maxmemory-policy and TTLs on the cache keys")
    return "; ".join(advice) or "review connection pool sizing against max_connections"


DATABASE_ISSUES = Scenario(
    name="database-issues",
    default_severity=DEFAULT_SEVERITY["database-issues"],
    impact="Requests that touch the database fail or hang",
    summary=lambda ctx: f"database issues behind {ctx.service_name}",
    diagnose=diagnose,
    plan=plan,
    verify=verify_database,
    root_cause=root_cause,
    prevention=prevention,
)


@flow(name="database-issues", description="Playbook Scenario 3 (P1): database issues. Diagnose PostgreSQL "
                                          "(locks, connections, queries, replication) and the cache; terminate, "
                                          "cancel, clear or restart behind an approval; verify.",
      on_cancellation=[record_cancellation])
def database_issues(service: str, environment: str = "sandbox", severity: Severity | None = None,
                    dry_run: bool = False, alert: AlertParameter | None = None) -> dict[str, Any] | State:
    """Args:
        service: the service whose database is in trouble (its config names the database and cache).
        environment: which environment's config to use.
        severity: P0..P3; defaults to P1.
        dry_run: diagnose and plan, report the plan, change nothing, do not pause.
        alert: the alert that started the run, if any.
    """
    ctx = RunContext.load(environment, service)
    try:
        return run_scenario(DATABASE_ISSUES, ctx, severity, dry_run, alert).as_dict()
    except RunCancelled as exc:  # a Cancel the worker had not acted on yet: the run ends Cancelled itself
        return ended_cancelled(exc)
