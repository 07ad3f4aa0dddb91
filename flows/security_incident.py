"""Playbook Scenario 4: Security Incident (P0).

    1. Immediate response      -> rotate secrets, block suspicious IPs, enable additional
                                  logging: each approved first, after an evidence snapshot
    2. Notify security team    -> its own Slack target
    3. Document everything     -> timeline, evidence artifact, issue comments
    4. Prepare public comms    -> a draft artifact, never published
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State

from incidents.alerts import DEFAULT_SEVERITY, AlertParameter
from incidents.check_facts import EVIDENCE, HEALTH, EvidenceFacts
from incidents.findings import Finding, report_markdown
from incidents.models import EventKind, Incident, Outcome, Severity
from incidents.plans import Plan
from incidents.security_rules import (
    REVOKE_AT_ISSUER,
    plan_security_incident,
    public_statement_draft,
    suspicious_cidrs,
)
from incidents.templates import stamp
from incidents.timeline_payloads import AddressesDropped, EvidenceCaptured
from incidents.vocabulary import ActionKind, DetectedBy
from tasks.cancellation import RunCancelled, ended_cancelled, record_cancellation
from tasks.context import RunContext
from tasks.diagnosis import gather, probe_endpoints
from tasks.lifecycle import run_scenario
from tasks.notify import notify_security_team
from tasks.reporting import publish_report
from tasks.scenario import Scenario
from tasks.security import capture_evidence, file_revocation, rotated_secrets, verify_containment
from tasks.timeline import record


def diagnose(ctx: RunContext) -> dict[str, Finding]:
    futures = {EVIDENCE: capture_evidence.submit(ctx),
               HEALTH: probe_endpoints.submit(ctx.service.endpoints, ctx.config.timeouts.probe_seconds)}
    return gather(futures, timeout=120)


def keep_evidence(ctx: RunContext, incident: Incident, findings: dict[str, Finding], cidrs: list[str],
                  dropped: Sequence[str] = ()) -> None:
    """Before any change: the evidence as an artifact and on the issue, the security team told,
    a public statement drafted. Addresses the alert named but that cannot be blocked are
    recorded with the reason."""
    evidence = findings[EVIDENCE]
    if dropped:
        record(ctx, incident.id, "runbook", EventKind.ADDRESSES_DROPPED,
               f"{len(dropped)} address(es) from the alert not blocked: {'; '.join(dropped)}"[:1000],
               AddressesDropped(dropped=list(dropped), kept=cidrs))
    publish_report(ctx, incident, "evidence", report_markdown(
        f"Evidence snapshot for incident {incident.id} (before any change)", [evidence], None, with_plan=False))
    record(ctx, incident.id, "runbook", EventKind.EVIDENCE_CAPTURED, evidence.summary,
           EvidenceCaptured(secrets=list(evidence.facts(EvidenceFacts).secrets)))
    if incident.detected_by != DetectedBy.DRY_RUN:  # a dry run tells nobody
        notify_security_team(ctx, incident.id, f"🔐 SECURITY INCIDENT\nIssue: {incident.issue_ref}\n"
                                               f"Service: {ctx.service_name} ({ctx.environment})\n"
                                               f"Suspicious sources: {', '.join(cidrs) or 'none named'}\n"
                                               + (f"Not blocked (invalid): {len(dropped)}\n" if dropped else "")
                                               + f"Evidence: {evidence.summary}")
    create_markdown_artifact(markdown=public_statement_draft(ctx.service_name, stamp(incident.opened_at), cidrs),
                             key=f"incident-{incident.id}-public-draft",
                             description="Draft public communication: review before publishing; not sent")
    record(ctx, incident.id, "runbook", EventKind.PUBLIC_DRAFT, "Public communication drafted (not published)")


def root_cause(findings: dict[str, Finding], plan: Plan) -> str:
    return "Suspected compromise of the service's credentials or exposure to hostile traffic; " \
           "forensics pending (see the evidence snapshot)."


def prevention(findings: dict[str, Finding], plan: Plan) -> str:
    revoke = (f"Rotation replaced the values in the cluster only: {REVOKE_AT_ISSUER} (action item filed). "
              if any(a.kind == ActionKind.ROTATE_SECRETS for a in plan.actions) else "")
    return revoke + "Shorter credential lifetimes with automatic rotation; review the evidence in the post-mortem."


SECURITY_INCIDENT = Scenario(
    name="security-incident",
    default_severity=DEFAULT_SEVERITY["security-incident"],
    impact="Possible exposure of the service and its data",
    summary=lambda ctx: f"security incident on {ctx.service_name}",
    diagnose=diagnose,
    plan=lambda ctx, incident, findings, onset: Plan(incident.id, ctx.service_name, ctx.environment, ()),
    verify=verify_containment,
    root_cause=root_cause,
    prevention=prevention,
)


@flow(name="security-incident", description="Playbook Scenario 4 (P0): security incident. Evidence first, "
                                            "then rotate secrets, block suspicious IPs and raise logging behind "
                                            "an approval; tell the security team; draft public communication.",
      on_cancellation=[record_cancellation])
def security_incident(service: str, environment: str = "sandbox", severity: Severity | None = None,
                      dry_run: bool = False, alert: AlertParameter | None = None) -> dict[str, Any] | State:
    """Args:
        service: the affected service.
        environment: which environment's config to use.
        severity: P0..P3; defaults to P0.
        dry_run: capture evidence, diagnose and plan, change nothing, do not pause.
        alert: the alert; `annotations.suspicious_ips` (or label `source_ip`) names addresses to block.
    """
    cidrs, dropped = suspicious_cidrs(alert)  # an invalid address is dropped, with its reason; the rest go on
    ctx = RunContext.load(environment, service)
    if dropped:
        get_run_logger().warning("Addresses dropped from the alert: %s", "; ".join(dropped))
    scenario = dataclasses.replace(
        SECURITY_INCIDENT,
        plan=lambda c, incident, findings, onset: plan_security_incident(incident.id, c.environment, c.service_name,
                                                                   c.service, findings, cidrs),
        after_diagnosis=lambda c, incident, findings: keep_evidence(c, incident, findings, cidrs, dropped))
    try:
        result = run_scenario(scenario, ctx, severity, dry_run, alert)
    except RunCancelled as exc:  # a Cancel the worker had not acted on yet: the run ends Cancelled itself
        return ended_cancelled(exc)
    rotated = rotated_secrets(ctx, result.incident_id) if result.outcome == Outcome.RESOLVED else []
    if rotated:
        file_revocation(ctx, result.incident_id, rotated)
    return result.as_dict()
