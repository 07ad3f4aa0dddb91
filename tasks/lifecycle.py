"""The lifecycle every scenario flow follows (open, diagnose, plan, approve, act, verify,
close or escalate). A scenario supplies what it diagnoses, how it plans and how it verifies;
this runs the rest the same way for all of them (tasks/scenario.py says what a scenario
supplies). Call it from inside a flow."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timezone
from typing import Mapping

from prefect.runtime import flow_run

from incidents import templates
from incidents.alerts import AlertParameter
from incidents.errors import RunbookError
from incidents.findings import Finding, report_markdown
from incidents.models import Approval, EventKind, Incident, Lease, Outcome, Severity, Status
from incidents.plans import Plan
from incidents.run_result import DecisionSummary, Judgement, RunResult, VerificationSummary
from incidents.store import StoreError
from incidents.timeline_payloads import (
    ActionTaken,
    Diagnosis,
    DryRunPlan,
    FindingBrief,
    FindingsAdded,
    HandedOver,
    Resumed,
    RunHolder,
)
from incidents.vocabulary import DetectedBy
from integrations.errors import IntegrationError
from tasks import permissions, telemetry
from tasks.approval import Decision, request_approval
from tasks.cancellation import RunCancelled
from tasks.context import RunContext
from tasks.deploys import RemediationFailed
from tasks.incident import escalate_incident, resolve_incident
from tasks.leases import await_turn, holder_of, holding
from tasks.notify import notify_slack, refresh_issue
from tasks.reporting import publish_report
from tasks.scenario import Scenario
from tasks.steps import run_logger
from tasks.timeline import record


def _status(ctx: RunContext, incident: Incident, status: Status, eta: str, impact: str, note: str) -> None:
    """A phase change: the record's status, ETA and impact, and a Status Update (which also
    restarts the cadence of periodic updates)."""
    try:
        ctx.store().set_status(incident.id, status, eta=eta, impact=impact, last_update_at=datetime.now(timezone.utc))
    except StoreError as exc:
        run_logger().error("Incident %s status not updated: %s", incident.id, exc)
    notify_slack(ctx, incident.id, templates.status_update(incident, status.value, eta, impact, note))
    refresh_issue(ctx, incident.id, run_logger())


def drill_approval(ctx: RunContext, alert: AlertParameter | None) -> tuple[str | None, float]:
    """A drill's alert carries its drill id; only a drill that is registered, still running,
    for this environment and service, and set to automatic approval may approve its own plan."""
    drill_id = alert.labels.get("drill_id") if alert else None
    if not drill_id:
        return None, 0.0
    try:
        drill = ctx.store().drill(drill_id)
    except StoreError:
        return None, 0.0
    if (drill and drill.status == "running" and drill.environment == ctx.environment
            and drill.service == ctx.service_name and drill.approval_mode == "auto"):
        return drill_id, float(drill.approval_delay_seconds)
    return None, 0.0


class DiagnosisUnreadable(RunbookError):
    """A resumed run's stored diagnosis does not read back (a later version changed a check's facts)."""


def _current(ctx: RunContext, incident: Incident) -> Incident:
    try:
        return ctx.store().get(incident.id)
    except StoreError:
        return incident


def _resumption(ctx: RunContext) -> Approval | None:
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
                 alert: AlertParameter | None) -> RunResult:
    """A scenario's run, counted in the run metrics (tasks/telemetry.py): started each time its
    process starts (a resumed run counts again), finished with its outcome. A run that suspends
    at its approval leaves by Prefect's signal (not an Exception) and is not finished yet."""
    telemetry.run_started(scenario.name)
    try:
        result = _dry_run(scenario, ctx, severity, alert) if dry_run else _run(scenario, ctx, severity, alert)
    except Exception as exc:
        telemetry.run_finished(scenario.name, "cancelled" if isinstance(exc, RunCancelled) else "error")
        raise
    telemetry.run_finished(scenario.name, result.outcome.value if result.outcome else "none")
    return result


def _run(scenario: Scenario, ctx: RunContext, severity: Severity | None, alert: AlertParameter | None) -> RunResult:
    logger = run_logger()
    earlier = _resumption(ctx)
    if earlier is not None:
        incident = ctx.store().get(earlier.incident_id)
        telemetry.current_incident.set(incident.id)
        if earlier.unreadable_findings:
            raise DiagnosisUnreadable(f"approval {earlier.id}'s stored diagnosis does not read back "
                                      f"({earlier.unreadable_findings}); nothing was changed: run the runbook again")
        findings, plan = dict(earlier.findings or {}), earlier.plan
        logger.info("Resuming incident %s at its approval (%s)", incident.id, plan.summary)
        record(ctx, incident.id, "runbook", EventKind.RESUMED, "Run resumed at its approval; diagnosis is not repeated",
               Resumed(flow_run_id=str(flow_run.get_id()), run_count=flow_run.run_count))
        outcome = _result(scenario, ctx, incident).with_(plan=[a.describe() for a in plan.actions], resumed=True)
        scenario = next((s for s in scenario.handovers.values() if plan.scenario == s.name), scenario)
        return holding(
            ctx,
            incident,
            scenario.name,
            lambda: _approve_act_verify(scenario, ctx, incident, findings, plan, alert, outcome),
        )

    explicit = Severity(severity) if severity else None
    severity = explicit or scenario.default_severity
    detected_by = DetectedBy.ALERT if alert else DetectedBy.MANUAL_RUN
    # a person's declaration (/incident declare) is summed up in their words
    declared = alert.annotations.get("summary") if alert and alert.source == "slack" else None
    # Opening the incident (record, issue, Initial Alert) and the read-only checks run at the
    # same time: the first diagnosis step should not wait for GitHub and Slack.
    opening = scenario.phases.open(ctx, scenario.name, severity, declared or scenario.summary(ctx), alert,
                                   detected_by, explicit)
    findings = scenario.diagnose(ctx)
    incident = opening.result()
    telemetry.current_incident.set(incident.id)
    holder = holder_of(ctx, incident, scenario.name)
    if holder is not None and (holder.incident_id == incident.id or _failing(findings)):
        holder = await_turn(ctx, incident, scenario.name, holder)
        incident = _current(ctx, incident)  # a joined incident got its issue from its own run meanwhile
    outcome = _result(scenario, ctx, incident)
    if holder is None:
        return holding(ctx, incident, scenario.name,
                        lambda: _diagnosed(scenario, ctx, incident, findings, alert, outcome), taken=True)
    if holder.incident_id == incident.id:
        return _contribute(scenario, ctx, incident, findings, holder, outcome)
    return _beside(scenario, ctx, incident, findings, holder, outcome)


def _result(scenario: Scenario, ctx: RunContext, incident: Incident, dry_run: bool = False) -> RunResult:
    return RunResult(incident_id=incident.id, issue=incident.issue_url, scenario=scenario.name,
                     service=ctx.service_name, environment=ctx.environment, severity=incident.severity.value,
                     dry_run=dry_run)


def _failing(findings: Mapping[str, Finding]) -> list[str]:
    return [f.check for f in findings.values() if f.ok is False]


def _beside(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding], holder: Lease,
            outcome: RunResult) -> RunResult:
    """This run's incident is an outage of its own (a drill, another cluster's alert) for a
    service that another incident's runbook holds. Nothing failing: confirmed and resolved as
    no impact, without the lease (nothing is changed). Something failing: no second plan is
    made for the service the holder acts on; the findings are recorded and this incident is
    escalated, so that a person decides - it is never left open with nobody on it."""
    failing = _failing(findings)
    if not failing:
        record(ctx, incident.id, "runbook", EventKind.INVESTIGATING, f"Investigation: {len(findings)} checks ran")
        return _no_impact(scenario, ctx, incident, outcome)
    joined = _contribute(scenario, ctx, incident, findings, holder, outcome)
    escalate_incident(ctx, incident, f"{', '.join(failing)} failing, but run {holder.flow_run_id} "
                                     f"(incident {holder.incident_id}) already works {ctx.service_name}: no "
                                     "second plan is made for it. Nothing was changed; a person must decide.",
                      Status.INVESTIGATING, scenario.impact)
    return joined.ended(Outcome.ESCALATED)


def _onset(alert: AlertParameter | None, incident: Incident) -> datetime | None:
    """When the failure began: the alert's startsAt, or the incident's first alert's; unknown
    for a manual run (the time someone pressed Run says nothing about when it broke)."""
    return (alert.started if alert else None) or (incident.alert.started if incident.alert else None)


def _dry_run(scenario: Scenario, ctx: RunContext, severity: Severity | None,
             alert: AlertParameter | None) -> RunResult:
    """Diagnose and plan, change nothing, page nobody: the record is closed from the start and
    the metrics do not count it."""
    severity = Severity(severity) if severity else scenario.default_severity
    summary = scenario.summary(ctx)
    record_ = ctx.store().record_dry_run(scenario.name, ctx.service_name, ctx.environment, severity,
                                         templates.issue_title_text(ctx.service_name, severity, summary),
                                         str(flow_run.get_id() or "") or None)
    findings = scenario.diagnose(ctx)
    if scenario.after_diagnosis:
        scenario.after_diagnosis(ctx, record_, findings)
    scenario, findings, plan, failing = _plan(scenario, ctx, record_, findings, alert.started if alert else None)
    publish_report(ctx, record_, "plan", "## Dry run: nothing was changed\n\n" + plan.markdown())
    record(ctx, record_.id, "runbook", EventKind.DRY_RUN, "Dry run: plan reported, nothing changed",
           DryRunPlan(plan=plan, judgement=_judgement(plan)))
    return _result(scenario, ctx, record_, dry_run=True).ended(
        Outcome.DRY_RUN, plan=[a.describe() for a in plan.actions], failing=failing, planned_by=scenario.name,
        judgement=_judgement(plan))


def _briefs(findings: dict[str, Finding]) -> dict[str, FindingBrief]:
    return {name: FindingBrief(ok=finding.ok, summary=finding.summary) for name, finding in findings.items()}


def _judgement(plan: Plan) -> Judgement:
    return Judgement(confidence=plan.confidence, abstained=plan.abstained, summary=plan.summary,
                     kinds=[a.kind for a in plan.actions], support=list(plan.support), against=list(plan.against))


def _plan(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding],
          onset: datetime | None) -> tuple[Scenario, dict[str, Finding], Plan, list[str]]:
    """The plan from the findings, recorded on the timeline with the diagnosis report. A plan
    that hands over to another scenario runs that one's checks and planning rule; the rest of
    the run (approval, action, verification) is then that scenario's."""
    plan = scenario.plan(ctx, incident, findings, onset)
    title = f"{scenario.name} for {ctx.service_name} ({ctx.environment})"
    successor = next((s for s in scenario.handovers.values() if plan.handover == s.name), None)
    if successor is not None:
        record(ctx, incident.id, "runbook", EventKind.HANDED_OVER, f"{scenario.name} hands over to {successor.name}: "
                                                           f"{plan.summary}", HandedOver(support=list(plan.support)))
        run_logger().info("Handing over to %s: %s", successor.name, plan.summary)
        findings = {**findings, **successor.diagnose(ctx)}
        scenario, plan = successor, successor.plan(ctx, incident, findings, onset)
        title = f"{title}, handed over to {successor.name}"
    plan = replace(plan, scenario=scenario.name)
    failing = _failing(findings)
    record(
        ctx,
        incident.id,
        "runbook",
        EventKind.DIAGNOSED,
        f"Diagnosis: {len(failing)} of {len(findings)} checks failing ({', '.join(failing) or 'none'}); {plan.summary}",
        Diagnosis(findings=_briefs(findings), judgement=_judgement(plan)),
    )
    telemetry.planned(incident)
    publish_report(ctx, incident, "diagnosis", report_markdown(f"Diagnosis: {title}", list(findings.values()), plan))
    run_logger().info("Plan (%s): %s", plan.confidence, plan.summary)
    return scenario, findings, plan, failing


def _contribute(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding], holder: Lease,
                outcome: RunResult) -> RunResult:
    """Another runbook holds this service: this run's findings join its incident, and no
    second plan is made for the same target."""
    failing = _failing(findings)
    held = f"run {holder.flow_run_id} ({holder.scenario}, incident {holder.incident_id})"
    note = (f"{scenario.name} found {len(failing)} of {len(findings)} checks failing ({', '.join(failing) or 'none'}); "
            f"{held} already works {ctx.service_name}, so no second plan is made")
    run_logger().info("Contributing findings: %s", note)
    record(ctx, incident.id, "runbook", EventKind.FINDINGS_ADDED, note,
           FindingsAdded(findings=_briefs(findings), holder=RunHolder.model_validate(holder.as_data())))
    publish_report(ctx, incident, f"{scenario.name}-findings",
                   report_markdown(f"Findings of {scenario.name} for {ctx.service_name} (joined; {held} acts)",
                                   list(findings.values()), None, with_plan=False))
    return outcome.ended(Outcome.JOINED, plan=[], held_by=holder.flow_run_id)


def _diagnosed(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding],
               alert: AlertParameter | None, outcome: RunResult) -> RunResult:
    record(ctx, incident.id, "runbook", EventKind.INVESTIGATING, f"Investigation: {len(findings)} checks ran")
    if scenario.after_diagnosis:
        scenario.after_diagnosis(ctx, incident, findings)
    scenario, findings, plan, failing = _plan(scenario, ctx, incident, findings, _onset(alert, incident))
    outcome = outcome.with_(plan=[a.describe() for a in plan.actions], judgement=_judgement(plan))
    if not plan.actions:
        if plan.abstained:
            # an abstention that names what it found (OOM kills, a config change, latency) has nothing against
            against = f" Evidence against: {'; '.join(plan.against)}." if plan.against else ""
            escalate_incident(ctx, incident, f"{plan.summary}{against} Nothing was changed.",
                              Status.INVESTIGATING, scenario.impact)
            return outcome.ended(Outcome.ABSTAINED)
        if failing:
            escalate_incident(ctx, incident, f"Checks fail ({', '.join(failing)}) but no automated remedy applies: "
                                             f"{plan.summary}", Status.INVESTIGATING, scenario.impact)
            return outcome.ended(Outcome.ESCALATED)
        return _no_impact(scenario, ctx, incident, outcome)
    refused = permissions.missing(ctx, plan.actions)
    if refused:  # nobody is asked to approve what the runbooks may not do
        escalate_incident(ctx, incident, f"{plan.summary} Not put to approval: {permissions.lacking(refused)}. "
                                         "Nothing was changed; a person must act.", Status.IDENTIFIED, scenario.impact)
        return outcome.ended(Outcome.ABSTAINED)
    _status(ctx, incident, Status.IDENTIFIED, "pending approval", scenario.impact, plan.summary)
    return _approve_act_verify(scenario, ctx, incident, findings, plan, alert, outcome)


def _no_impact(scenario: Scenario, ctx: RunContext, incident: Incident, outcome: RunResult) -> RunResult:
    """Every check passed on arrival. After `timeouts.confirm_seconds` the checks run again:
    still passing, the incident is resolved as "no impact found"; failing now, it escalates."""
    wait = ctx.config.timeouts.confirm_seconds
    record(ctx, incident.id, "runbook", EventKind.CONFIRMING,
           f"All checks pass; confirming in {wait:g} s before closing")
    time.sleep(wait)
    again = scenario.diagnose(ctx)
    failing = _failing(again)
    if failing:
        escalate_incident(ctx, incident, f"All checks passed on arrival but {', '.join(failing)} failed "
                                         f"{wait:g} s later: the service is unstable.", Status.INVESTIGATING,
                          scenario.impact)
        return outcome.ended(Outcome.ESCALATED)
    checks = ", ".join(f.check for f in again.values())
    if incident.joined or not incident.created:
        cause = "Not found: the checks pass again without any action by the runbook."
    else:
        cause = "No impact found: every check passed on arrival and again on confirmation."
    resolve_incident(ctx, incident, cause, f"No action taken; checks passing twice, {wait:g} s apart ({checks})",
                     "If the alert fired for a real problem the checks do not see, add a check for it.",
                     postmortem=False)
    return outcome.ended(Outcome.NO_IMPACT)


def _approve_act_verify(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding],
                        plan: Plan, alert: AlertParameter | None, outcome: RunResult) -> RunResult:
    drill_id, delay = drill_approval(ctx, alert)
    decision = request_approval(ctx, incident, plan, auto_approve_for_drill=drill_id, auto_approve_delay=delay,
                                findings=findings, ask=scenario.phases.ask)
    outcome = outcome.with_(decision=DecisionSummary(outcome=decision.outcome, approver=decision.approver,
                                                     reason=decision.reason, automatic=decision.automatic))
    ended = _not_to_act(scenario, ctx, incident, decision, outcome)
    if ended is not None:
        return ended
    return _act_and_verify(scenario, ctx, incident, findings, plan, decision, outcome)


def _not_to_act(scenario: Scenario, ctx: RunContext, incident: Incident, decision: Decision,
                outcome: RunResult) -> RunResult | None:
    """How the run ends when the plan is not to run: the incident was resolved meanwhile, the
    alert withdrew the approval, or nobody approved. None when the plan was approved."""
    if _current(ctx, incident).resolved_at is not None:  # resolved by hand while the approval waited
        record(ctx, incident.id, "runbook", EventKind.STOPPED, "The incident was resolved while the approval waited; "
                                                       "the plan is not run")
        return outcome.ended(Outcome.RESOLVED_ELSEWHERE)
    if decision.outcome == "withdrawn":
        resolve_incident(ctx, incident, "Withdrawn: the alert resolved before the plan was approved and stayed "
                                        "resolved.", f"Nothing was changed ({decision.reason})",
                         "If the alert flaps, review its threshold and duration.", postmortem=False,
                         actor=decision.approver or "runbooks intake")
        return outcome.ended(Outcome.WITHDRAWN)
    if not decision.approved:
        why = ("Nobody answered the approval in time" if decision.outcome == "timed_out"
               else f"The plan was declined by {decision.approver or 'an operator'} ({decision.reason})")
        escalate_incident(ctx, incident, f"{why}; nothing was changed. A person must take over.", Status.IDENTIFIED,
                          scenario.impact)
        return outcome.ended(Outcome(decision.outcome))
    return None


def _act_and_verify(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding],
                    plan: Plan, decision: Decision, outcome: RunResult) -> RunResult:
    logger = run_logger()
    try:
        results = scenario.phases.execute(ctx, plan, decision.grant)
    except StoreError as exc:  # each action is claimed in the store first: nothing ran
        failed = RemediationFailed(f"not started: the incident store, which makes each approved action run once, "
                                   f"is unreachable ({exc})")
        logger.error("Remediation failed: %s", failed)
        escalate_incident(ctx, incident, f"Remediation {failed}", Status.IDENTIFIED, scenario.impact)
        return outcome.ended(Outcome.REMEDIATION_FAILED, error=str(failed))
    except (RemediationFailed, IntegrationError) as exc:
        logger.error("Remediation failed: %s", exc)
        record(ctx, incident.id, "runbook", EventKind.ACTION_FAILED, f"Remediation failed: {exc}")
        escalate_incident(ctx, incident, f"Remediation failed: {exc}", Status.IDENTIFIED, scenario.impact)
        return outcome.ended(Outcome.REMEDIATION_FAILED, error=str(exc))
    for result in results:
        record(ctx, incident.id, decision.approver or "runbook", EventKind.ACTION, f"{result.action}: {result.detail}",
               ActionTaken(changed=result.changed))
    done = "; ".join(f"{r.action} ({r.detail})" for r in results)
    outcome = outcome.with_(actions=[r.detail for r in results])
    _status(ctx, incident, Status.MONITORING, "verifying now", scenario.impact, f"Applied: {done}")
    return _verify(scenario, ctx, incident, findings, plan, done, outcome)


def _verify(scenario: Scenario, ctx: RunContext, incident: Incident, findings: dict[str, Finding], plan: Plan,
            done: str, outcome: RunResult) -> RunResult:
    verification = scenario.verify(ctx, findings, plan)
    outcome = outcome.with_(verification=VerificationSummary(recovered=verification.recovered,
                                                             seconds=round(verification.seconds, 1),
                                                             detail=verification.detail))
    if verification.recovered:
        record(ctx, incident.id, "runbook", EventKind.RECOVERED,
               f"Recovery verified in {verification.seconds:.0f} s: {verification.detail}")
        resolve_incident(ctx, incident, scenario.root_cause(findings, plan), done, scenario.prevention(findings, plan))
        return outcome.ended(Outcome.RESOLVED)
    escalate_incident(ctx, incident, f"Applied {done}, but the service did not recover within "
                                     f"{ctx.config.timeouts.verify_seconds:g} s: {verification.detail}",
                      Status.IDENTIFIED, scenario.impact)
    return outcome.ended(Outcome.NOT_RECOVERED)
