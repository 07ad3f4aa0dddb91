"""The lifecycle every scenario flow follows (open, diagnose, plan, approve, act, verify,
close or escalate). A scenario supplies what it diagnoses, how it plans and how it verifies;
this runs the rest the same way for all of them. Call it from inside a flow."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from prefect import get_run_logger
from prefect.runtime import flow_run

from incidents import templates
from incidents.alerts import WITHDRAWN_REASON
from incidents.diagnosis import Finding, report_markdown
from incidents.models import Incident, Severity, Status
from incidents.plans import Plan
from incidents.store import DrillStore, StoreError
from integrations.errors import IntegrationError
from tasks.approval import request_approval
from tasks.context import RunContext
from tasks.deploys import RemediationFailed, Verification
from tasks.remedies import execute
from tasks.incident import escalate_incident, open_incident, resolve_incident
from tasks.notify import notify_slack
from tasks.reporting import publish_report
from tasks.timeline import record


@dataclass(frozen=True)
class Scenario:
    name: str
    default_severity: Severity
    impact: str
    summary: Callable[[RunContext], str]
    diagnose: Callable[[RunContext], dict[str, Finding]]
    plan: Callable[[RunContext, Incident, dict[str, Finding]], Plan]
    verify: Callable[[RunContext, dict[str, Finding], Plan], Verification]
    root_cause: Callable[[dict[str, Finding], Plan], str]
    prevention: Callable[[dict[str, Finding], Plan], str]
    # runs right after diagnosis, before any plan is shown (e.g. to keep evidence)
    after_diagnosis: Callable[[RunContext, Incident, dict[str, Finding]], None] | None = None


def _status(ctx: RunContext, incident: Incident, status: Status, eta: str, impact: str, note: str) -> None:
    """A phase change: the record's status, ETA and impact, and a Status Update (which also
    restarts the cadence of periodic updates)."""
    try:
        ctx.store().set_status(incident.id, status, eta=eta, impact=impact, last_update_at=datetime.now(timezone.utc))
    except StoreError as exc:
        get_run_logger().error("Incident %s status not updated: %s", incident.id, exc)
    notify_slack(ctx, incident.id, templates.status_update(incident, status.value, eta, impact, note))


def drill_approval(ctx: RunContext, alert: dict | None) -> tuple[str | None, float]:
    """A drill's alert carries its drill id; only a drill that is registered, still running,
    for this environment and service, and set to automatic approval may approve its own plan."""
    drill_id = ((alert or {}).get("labels") or {}).get("drill_id")
    if not drill_id:
        return None, 0.0
    try:
        drill = DrillStore().drill(drill_id)
    except StoreError:
        return None, 0.0
    if (drill and drill["status"] == "running" and drill["environment"] == ctx.environment
            and drill["service"] == ctx.service_name and drill["approval_mode"] == "auto"):
        return drill_id, float(drill["approval_delay_seconds"])
    return None, 0.0


def _findings_json(findings: dict[str, Finding]) -> dict:
    return json.loads(json.dumps({k: asdict(f) for k, f in findings.items()}, default=str))


def _findings_from(data: dict | None) -> dict[str, Finding]:
    return {k: Finding(**{**v, "details": tuple(v.get("details") or ())}) for k, v in (data or {}).items()}


def _resumption(ctx: RunContext) -> dict | None:
    """The approval this very run asked for before it was suspended (or interrupted), if any:
    a rescheduled run continues from there instead of opening and diagnosing again."""
    run_id = flow_run.get_id()
    if not run_id:
        return None
    try:
        return ctx.store().approval_for_run(str(run_id))
    except StoreError:
        return None


def run_scenario(scenario: Scenario, ctx: RunContext, severity: Severity | None, dry_run: bool,
                 alert: dict | None) -> dict[str, Any]:
    logger = get_run_logger()
    earlier = None if dry_run else _resumption(ctx)
    if earlier is not None:
        incident = ctx.store().get(earlier["incident_id"])
        findings, plan = _findings_from(earlier["findings"]), Plan.from_dict(earlier["plan"])
        logger.info("Resuming incident %s at its approval (%s)", incident.id, plan.summary)
        record(ctx, incident.id, "runbook", "resumed", "Run resumed at its approval; diagnosis is not repeated",
               {"flow_run_id": str(flow_run.get_id()), "run_count": flow_run.run_count})
        outcome: dict[str, Any] = {"incident_id": incident.id, "issue": incident.issue_url, "scenario": scenario.name,
                                   "service": ctx.service_name, "environment": ctx.environment,
                                   "severity": incident.severity.value, "dry_run": dry_run,
                                   "plan": [a.describe() for a in plan.actions], "resumed": True}
        return _approve_act_verify(scenario, ctx, incident, findings, plan, alert, outcome)

    severity = Severity(severity) if severity else scenario.default_severity
    detected_by = "alert" if alert else "manual run"
    # Opening the incident (record, issue, Initial Alert) and the read-only checks run at the
    # same time: the first diagnosis step should not wait for GitHub and Slack.
    opening = open_incident.submit(ctx, scenario.name, severity, scenario.summary(ctx), alert, detected_by)
    findings = scenario.diagnose(ctx)
    incident = opening.result()
    outcome = {"incident_id": incident.id, "issue": incident.issue_url, "scenario": scenario.name,
               "service": ctx.service_name, "environment": ctx.environment,
               "severity": severity.value, "dry_run": dry_run}
    record(ctx, incident.id, "runbook", "investigating", f"Investigation: {len(findings)} checks ran")
    if scenario.after_diagnosis:
        scenario.after_diagnosis(ctx, incident, findings)
    plan = scenario.plan(ctx, incident, findings)
    failing = [f.check for f in findings.values() if f.ok is False]
    record(ctx, incident.id, "runbook", "diagnosed",
           f"Diagnosis: {len(failing)} of {len(findings)} checks failing ({', '.join(failing) or 'none'}); {plan.summary}",
           {"findings": {k: {"ok": f.ok, "summary": f.summary} for k, f in findings.items()}})
    publish_report(ctx, incident, "diagnosis",
                   report_markdown(f"Diagnosis: {scenario.name} for {ctx.service_name} ({ctx.environment})",
                                   list(findings.values()), plan))
    outcome["plan"] = [a.describe() for a in plan.actions]
    logger.info("Plan: %s", plan.summary)

    if not plan.actions:
        if failing and not dry_run:
            escalate_incident(ctx, incident, f"Checks fail ({', '.join(failing)}) but no automated remedy applies: "
                                             f"{plan.summary}", Status.INVESTIGATING, scenario.impact)
            return {**outcome, "outcome": "escalated"}
        if not failing:
            _status(ctx, incident, Status.MONITORING, "none needed", "None observed now", plan.summary)
        return {**outcome, "outcome": "no_action"}
    if dry_run:
        publish_report(ctx, incident, "plan", "## Dry run: nothing was changed\n\n" + plan.markdown())
        record(ctx, incident.id, "runbook", "dry_run", "Dry run: plan reported, nothing changed",
               {"plan": plan.to_dict()})
        _status(ctx, incident, Status.IDENTIFIED, "awaiting a real run", scenario.impact,
                "Dry run: " + "; ".join(outcome["plan"]) + ". Nothing was changed.")
        return {**outcome, "outcome": "dry_run"}

    _status(ctx, incident, Status.IDENTIFIED, "pending approval", scenario.impact, plan.summary)
    return _approve_act_verify(scenario, ctx, incident, findings, plan, alert, outcome)


def _approve_act_verify(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding],
                        plan: Plan, alert: dict | None, outcome: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    drill_id, delay = drill_approval(ctx, alert)
    decision = request_approval(ctx, incident, plan, auto_approve_for_drill=drill_id, auto_approve_delay=delay,
                                findings=_findings_json(findings))
    outcome["decision"] = {"outcome": decision.outcome, "approver": decision.approver, "reason": decision.reason,
                           "automatic": decision.automatic}
    if not decision.approved and decision.reason == WITHDRAWN_REASON:
        _status(ctx, incident, Status.MONITORING, "alert cleared; confirming", scenario.impact,
                "The alert resolved before the plan was approved; nothing was changed.")
        return {**outcome, "outcome": "withdrawn"}
    if not decision.approved:
        why = ("Nobody answered the approval in time" if decision.outcome == "timed_out"
               else f"The plan was declined by {decision.approver or 'an operator'} ({decision.reason})")
        escalate_incident(ctx, incident, f"{why}; nothing was changed. A person must take over.", Status.IDENTIFIED,
                          scenario.impact)
        return {**outcome, "outcome": decision.outcome}

    try:
        results = execute(ctx, plan, decision.grant)
    except StoreError as exc:  # each action is claimed in the store first: nothing ran
        exc = RemediationFailed(f"not started: the incident store, which makes each approved action run once, "
                                f"is unreachable ({exc})")
        logger.error("Remediation failed: %s", exc)
        escalate_incident(ctx, incident, f"Remediation {exc}", Status.IDENTIFIED, scenario.impact)
        return {**outcome, "outcome": "remediation_failed", "error": str(exc)}
    except (RemediationFailed, IntegrationError) as exc:
        logger.error("Remediation failed: %s", exc)
        record(ctx, incident.id, "runbook", "action_failed", f"Remediation failed: {exc}")
        escalate_incident(ctx, incident, f"Remediation failed: {exc}", Status.IDENTIFIED, scenario.impact)
        return {**outcome, "outcome": "remediation_failed", "error": str(exc)}
    for result in results:
        record(ctx, incident.id, decision.approver or "runbook", "action", f"{result.action}: {result.detail}",
               {"changed": result.changed})
    done = "; ".join(f"{r.action} ({r.detail})" for r in results)
    outcome["actions"] = [r.detail for r in results]
    _status(ctx, incident, Status.MONITORING, "verifying now", scenario.impact, f"Applied: {done}")

    verification = scenario.verify(ctx, findings, plan)
    outcome["verification"] = {"recovered": verification.recovered, "seconds": round(verification.seconds, 1),
                               "detail": verification.detail}
    if verification.recovered:
        record(ctx, incident.id, "runbook", "recovered", f"Recovery verified in {verification.seconds:.0f} s: "
                                                         f"{verification.detail}")
        resolve_incident(ctx, incident, scenario.root_cause(findings, plan), done, scenario.prevention(findings, plan))
        return {**outcome, "outcome": "resolved"}
    escalate_incident(ctx, incident, f"Applied {done}, but the service did not recover within "
                                     f"{ctx.config.timeouts.verify_seconds:g} s: {verification.detail}",
                      Status.IDENTIFIED, scenario.impact)
    return {**outcome, "outcome": "not_recovered"}
