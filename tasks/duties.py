"""The incident roles' duties in the product (the playbook's Incident Roles table):

- the Incident Commander decides: when no approver has answered a plan within the severity's
  response time, the commander is asked in the thread (once per request);
- the Communications lead tells stakeholders: a stakeholder update is drafted for them on the
  severity's own cadence (`escalation.<P>.stakeholder_minutes`) while the incident is open, and
  the 24-hour summary with a public statement when it is resolved;
- the 24-hour summary is tracked like the post-mortem: due a day after the resolution, reminded
  every `post_incident.reminder_hours` while overdue, done when the Communications lead says it
  was sent (`/incident summary <id> sent`, `runbooks summary <id>`), and counted in the metrics.

Each duty is claimed once in the store (incidents/store_duties.py): two sweeps never post twice.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from incidents import templates
from incidents.errors import RunbookError
from incidents.models import EventKind, Incident
from incidents.store_duties import COMMANDER_ASKED, STAKEHOLDER_UPDATE, SUMMARY_24H
from incidents.timeline_payloads import CommanderAsked, StakeholderDraft, SummaryDrafted
from tasks.context import RunContext, Scope
from tasks.notify import comment_on_issue, refresh_issue, send_slack
from tasks.timeline import record

SUMMARY_WITHIN = timedelta(hours=24)


class DutyError(RunbookError, ValueError):
    """A duty that cannot be marked done (none drafted, or done already)."""


def _holder(ctx: RunContext, incident_id: int, role: str) -> str:
    return ctx.config.roles.holder(role, ctx.store().assigned_roles(incident_id))


def ask_commander(ctx: RunContext, incident: Incident, now: datetime) -> list[int]:
    """The approval requests no approver has answered within the response time: the commander
    is asked to get a decision (once per request). The ids of the requests asked about."""
    policy = ctx.config.escalation.policy(incident.severity)
    store = ctx.store()
    asked = []
    for approval in store.approvals(incident.id):
        silent = now - approval.requested_at
        if approval.decision is not None or silent < timedelta(minutes=policy.response_minutes) \
                or store.signatures(approval.id):
            continue
        if not store.claim_duty(incident.id, COMMANDER_ASKED, str(approval.id)):
            continue
        roles = ctx.config.roles
        commander = _holder(ctx, incident.id, "commander")
        approvers = [f"<@{a.slack_user}>" if a.slack_user else a.name for a in ctx.config.approval.approvers
                     if incident.severity.value in a.severities]
        minutes = silent.total_seconds() / 60
        said = (f"No approver has answered the plan for {minutes:.0f} min ({incident.severity.value} response time "
                f"{policy.response_minutes:g} min): the Incident Commander, {commander}, is asked to decide")
        send_slack(ctx, incident.id, "\n".join([
            "🧭 DECISION NEEDED",
            f"Issue: {incident.issue_ref}",
            f"No approver has answered the plan for {minutes:.0f} min.",
            f"Incident Commander: {roles.mention(commander)} - get an approver to Approve or Decline it, hand the "
            f"role over (`/incident role {incident.id} commander @someone`) or resolve it "
            f"(`/incident resolve {incident.id} <how>`).",
            f"Approvers: {' '.join(approvers) or '(none configured)'}",
        ]))
        record(ctx, incident.id, "incident-watch", EventKind.COMMANDER_ASKED, said,
               CommanderAsked(approval_id=approval.id, commander=commander, silent_minutes=round(minutes, 1)))
        asked.append(approval.id)
    return asked


def stakeholder_draft(ctx: RunContext, incident: Incident, now: datetime) -> bool:
    """The stakeholder update draft due on the severity's cadence (each one once)."""
    cadence = ctx.config.escalation.policy(incident.severity).stakeholder_minutes
    if not cadence:
        return False
    period = timedelta(minutes=cadence)
    count = math.floor((now - incident.opened_at) / period)
    if count < 1 or not ctx.store().claim_duty(incident.id, STAKEHOLDER_UPDATE, str(count)):
        return False
    comms = _holder(ctx, incident.id, "comms")
    next_at = incident.opened_at + (count + 1) * period
    send_slack(ctx, incident.id, templates.stakeholder_update(incident, ctx.config.roles.mention(comms), next_at))
    record(ctx, incident.id, "incident-watch", EventKind.STAKEHOLDER_DRAFT,
           f"Stakeholder update {count} drafted for {comms} (every {cadence:g} min for {incident.severity.value})",
           StakeholderDraft(count=count, comms=comms))
    return True


def draft_summary(ctx: RunContext, incident_id: int) -> bool:
    """The 24-hour summary and public statement, drafted from the record once the incident is
    resolved, in the thread and on the issue; due a day after the resolution."""
    store = ctx.store()
    incident = store.get(incident_id)
    if incident.resolved_at is None or (incident.alert is not None and incident.alert.drill_id):
        return False  # a drill's summary would go to real stakeholders
    due = incident.resolved_at + SUMMARY_WITHIN
    if not store.claim_duty(incident_id, SUMMARY_24H, due_at=due):
        return False
    comms = _holder(ctx, incident_id, "comms")
    moments = [e for e in store.timeline(incident_id) if str(e.kind) in templates.KEY_MOMENTS]
    text = templates.summary_24h(incident, ctx.config.roles.mention(comms), moments, due)
    send_slack(ctx, incident_id, text)
    comment_on_issue(ctx, incident_id, incident.github_repo, incident.github_issue,
                     "### 📋 24-hour summary (draft)\n\n" + "\n\n".join(
                         templates.markdown_text(line, 600) for line in text.splitlines()[2:]))
    record(ctx, incident_id, "runbook", EventKind.SUMMARY_DRAFTED,
           f"24-hour summary drafted for {comms}; due {due:%Y-%m-%d %H:%M} UTC", SummaryDrafted(due=due))
    return True


def summary_sent(ctx: RunContext, incident_id: int, by: str) -> str:
    """The Communications lead sent the 24-hour summary: the duty is done."""
    store = ctx.store()
    duty = store.duty(incident_id, SUMMARY_24H)
    if duty is None:
        raise DutyError(f"incident {incident_id} has no 24-hour summary drafted (it is drafted at the resolution)")
    if not store.complete_duty(incident_id, SUMMARY_24H, by):
        raise DutyError(f"the 24-hour summary of incident {incident_id} was marked sent already "
                        f"(by {duty.done_by})")
    now = datetime.now(timezone.utc)
    on_time = "on time" if duty.due_at is None or now <= duty.due_at else "late"
    said = f"24-hour summary sent by {by} ({on_time})"
    record(ctx, incident_id, by, EventKind.SUMMARY_SENT, said)
    send_slack(ctx, incident_id, f"✅ {said}")
    refresh_issue(ctx, incident_id)
    return said


def remind_summaries(scope: Scope, now: datetime) -> list[int]:
    """Overdue 24-hour summaries: the Communications lead is reminded (every reminder_hours)."""
    reminded, config, store = [], scope.config, scope.store()
    for duty in store.overdue_duties(scope.environment, SUMMARY_24H, now,
                                     timedelta(hours=config.post_incident.reminder_hours)):
        if not store.duty_reminded(duty, now):
            continue
        incident = store.get(duty.incident_id)
        ctx = scope.ctx(incident.service)
        comms = _holder(ctx, incident.id, "comms")
        late = now - (duty.due_at or now)
        send_slack(ctx, incident.id, "\n".join([
            "📋 24-HOUR SUMMARY OVERDUE",
            f"Issue: {incident.issue_ref}",
            f"Due {late.total_seconds() / 3600:.0f} h ago: {config.roles.mention(comms)}, send the summary drafted "
            f"in this thread, then `/incident summary {incident.id} sent`."]))
        record(ctx, incident.id, "incident-watch", EventKind.SUMMARY_OVERDUE,
               f"24-hour summary overdue ({late.total_seconds() / 3600:.0f} h); {comms} reminded")
        reminded.append(incident.id)
    return reminded
