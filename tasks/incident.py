"""The incident lifecycle shared by every scenario: open (record, issue, Initial Alert),
resolve (Resolution, issue closed) and escalate (Status Update to the people the severity
matrix names)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from prefect.runtime import flow_run

from incidents import templates
from incidents.alerts import AlertParameter, correlation_key
from incidents.escalation import level_contacts
from incidents.models import EventKind, Incident, Severity, Status
from incidents.redaction import redact
from incidents.store import StoreError
from incidents.timeline_payloads import Escalation, IssueOpened, Resolution
from incidents.vocabulary import DetectedBy
from integrations.errors import IntegrationError
from tasks.context import RunContext, SecretNotFound
from tasks.correlation import detected, join
from tasks.duties import draft_summary
from tasks.notify import comment_on_issue, notify_slack, refresh_issue
from tasks.paging import mentions, trigger_pagers, update_pagers
from tasks.postmortem import start_post_incident
from tasks.steps import run_logger, step
from tasks.timeline import record


def dedup_key(scenario: str, ctx: RunContext, alert: AlertParameter | None) -> str:
    """The incident's correlation key: one open incident per outage. The intake puts the key its
    route computed into the alert; a manual run correlates by environment and service."""
    if alert is not None and alert.correlation_key:
        return alert.correlation_key
    return correlation_key(ctx.environment, ctx.service_name, alert.labels if alert else {})


def escalation_contacts(ctx: RunContext, severity: Severity, level: int = 0) -> list[str]:
    """Who the Escalation Matrix (config `escalation`) pages for this severity at `level`."""
    return level_contacts(ctx.config.roles, ctx.config.escalation.policy(severity), level)


@step("open-incident")
def open_incident(ctx: RunContext, scenario: str, severity: Severity, summary: str,
                  alert: AlertParameter | None = None,
                  detected_by: DetectedBy = DetectedBy.RUNBOOK, explicit_severity: Severity | None = None) -> Incident:
    """Open the incident for this outage, or join the one already open for it (`joined` is then
    True). The run that works the incident announces it, once: the GitHub issue from the
    playbook template and the Initial Alert."""
    logger = run_logger()
    store = ctx.store()
    run_id = str(flow_run.get_id() or "") or None
    incident = store.open_incident(
        dedup_key=dedup_key(scenario, ctx, alert),
        scenario=scenario,
        service=ctx.service_name,
        environment=ctx.environment,
        severity=severity,
        title=templates.issue_title_text(ctx.service_name, severity, summary),
        detected_by=detected_by,
        flow_run_id=run_id,
        alert=alert.redacted() if alert else None,
        started_at=alert.started if alert else None,
    )
    if incident.created:
        detected(ctx, incident, detected_by, f"{scenario}: {summary}", alert)
    elif run_id is None or store.set_runbook_run(incident.id, run_id) != run_id:
        name = flow_run.get_name() or "a run"
        logger.info("Incident %s is already open for this outage (worked by run %s): joining it", incident.id,
                    incident.flow_run_id)
        join(ctx, incident, alert, explicit_severity, f"{scenario} run {name}", run_id)
        incident.joined = True
        return incident
    if store.claim_announcement(incident.id):
        announce(ctx, incident, severity, summary)
    return incident


def announce(ctx: RunContext, incident: Incident, severity: Severity, summary: str) -> None:
    """The incident's GitHub issue and its Initial Alert (paging level 0 of the matrix)."""
    logger = run_logger()
    severity = incident.severity  # an alert that joined before the announcement may have raised it
    repo = ctx.config.github.incident_repo
    try:
        with ctx.github() as github:
            issue = github.create_issue(repo, redact(templates.issue_title(incident, summary)),
                                        redact(templates.issue_body(incident, summary, ctx.config.roles.table(),
                                                                    ctx.config.escalation.policy(severity))),
                                        severity.labels)
        ctx.store().attach_issue(incident.id, repo, issue.number, issue.html_url)
        incident.github_repo, incident.github_issue, incident.issue_url = repo, issue.number, issue.html_url
        record(ctx, incident.id, "runbook", EventKind.ISSUE_OPENED, f"GitHub issue {repo}#{issue.number} opened",
               IssueOpened(url=issue.html_url, labels=list(severity.labels)))
        logger.info("Opened incident %s with issue %s", incident.id, issue.html_url)
    except (IntegrationError, SecretNotFound) as exc:
        logger.error("Incident issue not opened: %s", exc)
        record(ctx, incident.id, "runbook", EventKind.NOTIFICATION_FAILED, f"GitHub issue not opened: {exc}")
    paged = escalation_contacts(ctx, severity, 0)
    roles = ctx.config.roles
    run_url = ctx.run_url(flow_run.get_id())
    notify_slack(ctx, incident.id, templates.initial_alert(incident, summary, paged=mentions(ctx, paged),
                                                           commander=roles.mention(roles.incident_commander)),
                 link=("Open the run", run_url) if run_url else None)
    trigger_pagers(ctx, incident, 0, logger)


@step("resolve-incident")
def resolve_incident(ctx: RunContext, incident: Incident, root_cause: str, what_was_done: str, prevention: str,
                     postmortem: bool = True, actor: str = "runbook") -> bool:
    """Resolution message, issue comment and close, incident resolved in the record; then the
    post-incident run starts (the post-mortem) when the outcome needs one. False (and nothing
    posted) when the incident was resolved already, e.g. by hand meanwhile."""
    try:
        if not ctx.store().close(incident.id, root_cause, what_was_done, postmortem_needed=postmortem):
            run_logger().info("Incident %s was resolved already; no second Resolution", incident.id)
            return False
    except StoreError as exc:
        run_logger().error("Incident %s not marked resolved in the store: %s", incident.id, exc)
    record(ctx, incident.id, actor, EventKind.RESOLVED, f"Resolved: {what_was_done}", Resolution(root_cause=root_cause))
    text = templates.resolution(incident, root_cause, what_was_done, prevention)
    notify_slack(ctx, incident.id, text)
    update_pagers(ctx, incident, "resolve", actor, run_logger())
    repo, number = incident.github_repo, incident.github_issue
    if comment_on_issue(ctx, incident.id, repo, number, templates.resolution_markdown(root_cause, what_was_done,
                                                                                      prevention)) and repo and number:
        try:
            with ctx.github() as github:
                github.close_issue(repo, number)
        except (IntegrationError, SecretNotFound) as exc:
            record(ctx, incident.id, "runbook", EventKind.NOTIFICATION_FAILED, f"issue not closed: {exc}")
    refresh_issue(ctx, incident.id, run_logger())
    if postmortem:
        try:
            draft_summary(ctx, incident.id)
        except StoreError as exc:
            run_logger().error("Incident %s: 24-hour summary not drafted: %s", incident.id, exc)
        start_post_incident(ctx, incident)
    return True


@step("escalate-incident")
def escalate_incident(ctx: RunContext, incident: Incident, why: str, status: Status = Status.INVESTIGATING,
                      impact: str = "Service unavailable") -> list[str]:
    """Status Update plus the escalation the severity matrix asks for; returns who was notified."""
    contacts = escalation_contacts(ctx, incident.severity, 0)
    if contacts:  # the Incident Commander takes over what the runbook could not do
        contacts = list(dict.fromkeys([ctx.config.roles.incident_commander, *contacts]))
    paged = _already_escalated(ctx, incident)
    fresh = [c for c in contacts if c not in paged]
    who = " ".join(contacts) if contacts else "(issue only, per the P3 process)"
    if contacts and not fresh:
        who = f"{who} (already escalated to them for this incident; not paged again)"
    note = f"ESCALATION ({incident.severity.value}: {incident.severity.escalation}) {why}"
    try:
        ctx.store().set_status(incident.id, status)
    except StoreError as exc:
        run_logger().error("Incident %s status not updated: %s", incident.id, exc)
    record(ctx, incident.id, "runbook", EventKind.ESCALATED, why,
           Escalation(contacts=contacts, paged=fresh, severity=incident.severity))
    if contacts:
        notify_slack(ctx, incident.id, templates.status_update(incident, status.value, "unknown - needs a human",
                                                               impact, note, paging=mentions(ctx, fresh)))
    comment_on_issue(ctx, incident.id, incident.github_repo, incident.github_issue,
                     f"### Escalated\n\n{templates.markdown_text(why, 600)}\n\nNotified: {who}")
    refresh_issue(ctx, incident.id, run_logger())
    return fresh


def _already_escalated(ctx: RunContext, incident: Incident) -> set[str]:
    """Who a runbook's escalation paged for this incident at its current severity within the
    severity's response time: a second runbook that cannot act either (say both symptoms'
    runbooks abstain) adds its reason to the thread without ringing the same people twice. Once
    the response time has passed they are paged again (the watch escalates wider as well)."""
    try:
        events = ctx.store().timeline(incident.id)
    except StoreError:
        return set()
    window = timedelta(minutes=ctx.config.escalation.policy(incident.severity).response_minutes)
    since = datetime.now(timezone.utc) - window
    escalations = [(e.at, e.data) for e in events if e.actor == "runbook" and isinstance(e.data, Escalation)]
    return {contact for at, escalation in escalations if escalation.severity == incident.severity and at >= since
            for contact in escalation.rung()}
