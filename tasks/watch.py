"""The incident watch: what keeps happening while incidents are open, independent of any
runbook run (which may be paused for an approval, suspended, or gone):

- escalation of unacknowledged incidents, level by level, per the Escalation Matrix;
- the Status Update cadence while an incident is open;
- reminders for overdue post-mortems and overdue action items, and completion tracking of
  action items (their GitHub issue closed = done);
- the roles' duties (tasks/duties.py): the commander asked when approvers are silent, the
  stakeholder update drafts, reminders for overdue 24-hour summaries;
- the deadline of approvals whose runs are suspended (no process is left to notice it).

Every step takes its turn through a conditional update in the store, so two sweeps at the
same moment page nobody twice. `now` is a parameter so that tests can move the clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect.client.orchestration import get_client

from incidents import templates
from incidents.config import load_config
from incidents.escalation import escalation_due, next_update, status_update_due
from incidents.models import EventKind, Incident
from incidents.store import StoreError
from incidents.timeline_payloads import ApprovalStep, Escalation, StatusUpdate
from integrations.errors import IntegrationError
from tasks.approval import TIMEOUT_REASON, ApprovalInput, deadline_answer, form_name
from tasks.cancellation import note_cancellation
from tasks.containment import review_containments
from tasks.context import PRODUCTION, RunContext, Scope, SecretNotFound, Wiring
from tasks.correlation import withdraw_quiet
from tasks.duties import ask_commander, remind_summaries, stakeholder_draft
from tasks.incident import resolve_incident
from tasks.notify import comment_on_issue, notify_slack, refresh_issue
from tasks.paging import mentions, retrigger_missing, trigger_pagers, update_pagers
from tasks.steps import run_logger, step
from tasks.timeline import record
from tasks.watch_summary import ActionItemsTracked, Escalated, ResolvedByHand, SweepSummary


def escalate(ctx: RunContext, incident: Incident, now: datetime) -> Escalated | None:
    """Page the next level when the response time passed without an acknowledgment."""
    policy = ctx.config.escalation.policy(incident.severity)
    due = escalation_due(incident, ctx.config.roles, policy, now)
    if due is None or not ctx.store().escalate_to(incident.id, incident.escalation_level, due.level):
        return None
    minutes = due.overdue.total_seconds() / 60
    who = " ".join(due.contacts) or "(nobody configured at this level)"
    why = (f"Not acknowledged {minutes:.0f} min after it opened ({incident.severity.value} response time "
           f"{policy.response_minutes:g} min): escalation level {due.level}. "
           f"Acknowledge with `runbooks ack {incident.id}`, in PagerDuty, or by answering the approval.")
    run_logger().warning("Incident %s: %s", incident.id, why)
    record(ctx, incident.id, "incident-watch", EventKind.ESCALATED, f"{why} Paging: {who}.",
           Escalation(level=due.level, contacts=list(due.contacts), unacknowledged_minutes=round(minutes, 1)))
    notify_slack(ctx, incident.id, templates.status_update(
        incident, incident.status.value, incident.eta or "unknown - needs a human",
        incident.impact or "being assessed", f"⏫ ESCALATION level {due.level}: {why}",
        paging=mentions(ctx, due.contacts)))
    trigger_pagers(ctx, incident, due.level)
    comment_on_issue(ctx, incident.id, incident.github_repo, incident.github_issue,
                     f"### ⏫ Escalated to level {due.level}\n\n{templates.markdown_text(why, 600)}\n\nPaging: {who}")
    return Escalated(incident=incident.id, level=due.level, contacts=list(due.contacts))


def status_cadence(ctx: RunContext, incident: Incident, now: datetime) -> bool:
    """The periodic Status Update, with the ETA and impact last stated."""
    policy = ctx.config.escalation.policy(incident.severity)
    if not status_update_due(incident, policy, now):
        return False
    if not ctx.store().claim_status_update(incident.id, incident.last_update_at, now):
        return False
    upcoming = next_update(incident, policy, now)
    note = (f"Periodic update ({incident.severity.value}: every {policy.status_minutes:g} min). "
            f"Next update by {upcoming:%H:%M} UTC.")
    if incident.acknowledged_by:
        note += f" Acknowledged by {incident.acknowledged_by}."
    notify_slack(ctx, incident.id, templates.status_update(incident, incident.status.value,
                                                           incident.eta or "being assessed",
                                                           incident.impact or "being assessed", note))
    record(ctx, incident.id, "incident-watch", EventKind.STATUS_UPDATE, f"Status Update: {incident.status.value}",
           StatusUpdate(eta=incident.eta, impact=incident.impact))
    return True


def remind_postmortems(scope: Scope, now: datetime) -> list[int]:
    environment, config, store = scope.environment, scope.config, scope.store()
    settings = config.post_incident
    reminded = []
    for row in store.overdue_postmortems(environment, now, timedelta(days=settings.postmortem_due_days),
                                         timedelta(hours=settings.reminder_hours)):
        incident = store.get(row.incident_id)
        ctx = scope.ctx(incident.service)
        overdue = now - (incident.resolved_at or now)
        text = (
            f"📝 POST-MORTEM OVERDUE\nIssue: {incident.issue_ref}\nService: {templates.slack_text(incident.service)}\n"
            f"Resolved {overdue.days} days ago; the playbook asks for the post-mortem within "
            f"{settings.postmortem_due_days:g} days.\n"
            f"Documentation: {config.roles.mention(config.roles.documentation)}\n"
            f"Fill it in: the post-incident run"
            + (
                f" {ctx.run_url(row.postmortem_run)}"
                if row.postmortem_run
                else f" (`runbooks postmortem {incident.id}`)"
            )
        )
        notify_slack(ctx, incident.id, text)
        comment_on_issue(ctx, incident.id, incident.github_repo, incident.github_issue,
                         f"### 📝 Post-mortem overdue\n\nResolved {overdue.days} days ago. "
                         f"{config.roles.documentation}, please complete it.")
        record(ctx, incident.id, "incident-watch", EventKind.POSTMORTEM_OVERDUE,
               f"Post-mortem overdue ({overdue.days} days)")
        store.postmortem_reminded(incident.id, now)
        reminded.append(incident.id)
    return reminded


def track_action_items(scope: Scope, now: datetime) -> ActionItemsTracked:
    """Closed issue = done; open past its due date = a reminder (at most every reminder_hours)."""
    tracked = ActionItemsTracked()
    remind_every = timedelta(hours=scope.config.post_incident.reminder_hours)
    store = scope.store()
    for item in store.action_items(environment=scope.environment, open_only=True):
        if not item.repo or not item.issue_number:
            continue
        incident = store.get(item.incident_id)
        ctx = scope.ctx(incident.service)
        try:
            with ctx.github() as github:
                issue = github.get_issue(item.repo, item.issue_number)
        except (IntegrationError, SecretNotFound) as exc:
            run_logger().warning("Action item %s not checked: %s", item.id, exc)
            continue
        if issue.state == "closed":
            store.complete_action_item(item.id, now)
            record(ctx, incident.id, "incident-watch", EventKind.ACTION_ITEM_DONE,
                   f"Action item done: {item.title} ({item.repo}#{item.issue_number})")
            tracked.done.append(item.id)
        elif item.due_at <= now and (
            item.last_reminded_at is None or item.last_reminded_at + remind_every <= now
        ):
            late = now - item.due_at
            notify_slack(
                ctx,
                incident.id,
                f"⏰ ACTION ITEM OVERDUE\nIssue: {incident.issue_ref}\n"
                f"Item: {templates.slack_text(item.title)} ({item.repo}#{item.issue_number})\n"
                f"Owner: {templates.slack_text(item.owner or 'unassigned')}\n"
                f"Due: {templates.stamp(item.due_at)} ({late.days} d {late.seconds // 3600} h ago)",
            )
            comment_on_issue(ctx, incident.id, item.repo, item.issue_number,
                             f"⏰ Overdue since {templates.stamp(item.due_at)}.")
            store.action_item_reminded(item.id, now)
            tracked.reminded.append(item.id)
    return tracked


def decline_expired_approvals(scope: Scope, now: datetime) -> list[int]:
    """Approvals past their deadline: resume the waiting run with the deadline's decline, so it
    reports "nothing changed" and escalates. A suspended run has no process that could notice
    the deadline itself. A run that is no longer waiting gets the approval closed as timed out."""
    declined, store = [], scope.store()
    for approval in store.expired_approvals(scope.environment, now):
        try:
            accepted = _resume(str(approval.flow_run_id), deadline_answer())
        except Exception as exc:  # noqa: BLE001 - the run is gone or the API is down: close the request below
            run_logger().warning(
                "Approval %s: run %s not resumed: %s", approval.id, approval.flow_run_id, exc
            )
            accepted = False
        incident = store.get(approval.incident_id)
        ctx = scope.ctx(incident.service)
        if accepted:
            record(ctx, incident.id, "incident-watch", EventKind.APPROVAL_DEADLINE,
                   "Approval deadline passed: the waiting run was resumed with a decline; nothing is changed")
        else:
            store.decide_approval(approval.id, "timed_out", None, TIMEOUT_REASON)
            record(ctx, incident.id, "incident-watch", EventKind.APPROVAL_TIMED_OUT,
                   f"Approval deadline passed and run {approval.flow_run_id} was no longer waiting: "
                   "request closed as timed out; nothing was changed", ApprovalStep(plan_digest=approval.plan_digest))
        declined.append(approval.id)
    return declined


_ENDED = ("CANCELLED", "CRASHED", "FAILED", "COMPLETED")


def close_ended_runs(scope: Scope) -> list[int]:
    """Approvals whose runs ended without an answer are closed (withdrawn), so that a press in
    Slack or on the page says so instead of failing. A run cancelled while suspended at its
    approval has no process, so no worker runs its on_cancellation hook: the Cancel is recorded
    and announced here."""
    closed: list[int] = []
    store = scope.store()
    waiting = store.waiting_approvals(scope.environment)
    if not waiting:
        return closed
    with get_client(sync_client=True) as client:
        for approval in waiting:
            try:
                run = client.read_flow_run(UUID(str(approval.flow_run_id)))
            except Exception as exc:  # noqa: BLE001 - the API is down or the run is gone: next sweep
                run_logger().warning(
                    "Approval %s: run %s not read: %s", approval.id, approval.flow_run_id, exc
                )
                continue
            if run.state is None or run.state.type.value not in _ENDED:
                continue
            if not store.withdraw_approval(approval.id, "incident-watch",
                                           f"run {run.name} ended ({run.state.name}) without an answer"):
                continue
            closed.append(approval.id)
            if run.state.type.value == "CANCELLED":
                note_cancellation(run, run.state.message or "", scope.wiring)
            else:
                store.add_event(approval.incident_id, "incident-watch", EventKind.APPROVAL_CLOSED,
                                f"Run {run.name} ended ({run.state.name}) while waiting for approval: the request "
                                "is closed; nothing was changed")
    return closed


def _resume(flow_run_id: str, answer: ApprovalInput) -> bool:
    with get_client(sync_client=True) as client:
        return client.resume_flow_run(UUID(flow_run_id), run_input=answer.model_dump()).status.value == "ACCEPT"


@step("sweep-incidents")
def sweep(environment: str, now: datetime | None = None, wiring: Wiring = PRODUCTION) -> SweepSummary:
    """One pass of the watch over the environment's incidents and follow-ups."""
    now = now or datetime.now(timezone.utc)
    scope = Scope.load(environment, wiring)
    store = scope.store()
    summary = SweepSummary()
    for incident in store.list(limit=500, open_only=True, environment=environment):
        summary.open += 1
        ctx = scope.ctx(incident.service)
        try:
            retrigger_missing(ctx, incident)  # a page PagerDuty did not take is sent again
            escalated = escalate(ctx, incident, now)
            if escalated:
                summary.escalated.append(escalated)
            if status_cadence(ctx, incident, now):
                summary.status_updates.append(incident.id)
            summary.commander_asked += ask_commander(ctx, incident, now)
            if stakeholder_draft(ctx, incident, now):
                summary.stakeholder_drafts.append(incident.id)
        except StoreError as exc:
            run_logger().error("Incident %s skipped this sweep: %s", incident.id, exc)
    summary.expired_approvals = decline_expired_approvals(scope, now)
    summary.ended_runs = close_ended_runs(scope)
    summary.withdrawn = withdraw_quiet(store, environment, load_config().intake.resolve_grace_seconds, now, _resume)
    summary.postmortem_reminders = remind_postmortems(scope, now)
    summary.summary_reminders = remind_summaries(scope, now)
    summary.action_items = track_action_items(scope, now)
    summary.containment = review_containments(scope, now)
    run_logger().info("Sweep of %s: %s open, %s escalated, %s status updates, %s post-mortem reminders",
                      environment, summary.open, len(summary.escalated), len(summary.status_updates),
                      len(summary.postmortem_reminders))
    return summary


def _incident_in(environment: str, wiring: Wiring, incident_id: int) -> tuple[Incident, RunContext]:
    """A person names an incident: it must belong to the environment they act in."""
    incident = wiring.store().get(incident_id)
    if incident.environment != environment:
        raise ValueError(f"incident {incident_id} belongs to environment {incident.environment!r}, not {environment!r}")
    return incident, Scope.load(environment, wiring).ctx(incident.service)


@step("acknowledge-incident")
def acknowledge(environment: str, incident_id: int, by: str, wiring: Wiring = PRODUCTION) -> bool:
    """An explicit acknowledgment: escalation stops. False if it was already acknowledged."""
    by = by.strip()
    if not by:
        raise ValueError("say who acknowledges (a name)")
    incident, ctx = _incident_in(environment, wiring, incident_id)
    if not ctx.store().acknowledge(incident_id, by):
        run_logger().info("Incident %s was already acknowledged (by %s) or is closed", incident_id,
                              incident.acknowledged_by or "-")
        return False
    record(ctx, incident_id, by, EventKind.ACKNOWLEDGED, f"Acknowledged by {by}; escalation stops")
    update_pagers(ctx, incident, "acknowledge", by)
    refresh_issue(ctx, incident_id, run_logger())
    notify_slack(
        ctx,
        incident_id,
        templates.status_update(
            incident,
            incident.status.value,
            incident.eta or "being assessed",
            incident.impact or "being assessed",
            f"👀 Acknowledged by {by}; escalation stops.",
        ),
    )
    return True


@step("resolve-incident-by-hand")
def resolve_by_hand(environment: str, incident_id: int, by: str, note: str,
                    wiring: Wiring = PRODUCTION) -> ResolvedByHand:
    """A person closes the incident: Resolution message, issue closed with the Resolution
    template, post-mortem started. A runbook still waiting for its approval is stopped (its
    approval withdrawn in the person's name): nothing it planned runs any more."""
    by, note = by.strip(), note.strip()
    if not by or not note:
        raise ValueError("say who resolves it (--by NAME) and how it was resolved (--note TEXT)")
    incident, ctx = _incident_in(environment, wiring, incident_id)
    store = ctx.store()
    if incident.resolved_at is not None:
        raise ValueError(f"incident {incident_id} is already resolved ({incident.resolution or 'no resolution noted'})")
    record(ctx, incident_id, by, EventKind.RESOLVED_BY_HAND, f"Resolved by hand by {by}: {note}")
    resolve_incident.fn(ctx, incident, f"Resolved by hand by {by} (see the note).", note,
                        "To be worked out in the post-mortem.", actor=by)
    stopped = []  # after the close: a woken run finds the incident resolved and does nothing
    for approval in store.approvals(incident_id):
        if approval.decision is None and approval.flow_run_id and \
                store.withdraw_approval(approval.id, by, f"incident resolved by hand: {note}"[:500]):
            try:  # a run no longer waiting (cancelled, gone) has nothing to stop: its request is closed
                if _resume(approval.flow_run_id, ApprovalInput(approve=False, approver=form_name(by),
                                                               reason="incident resolved by hand")):
                    stopped.append(approval.flow_run_id)
            except Exception as exc:  # noqa: BLE001 - the decision stands; the run reads it when it wakes
                run_logger().warning("run %s not resumed: %s", approval.flow_run_id, exc)
    return ResolvedByHand(incident_id=incident_id, resolved_by=by, stopped_runs=stopped)
