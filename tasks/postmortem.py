"""The post-incident process: the form people fill in (root cause, impact, lessons, action
items), the post-mortem published as an artifact and on the incident issue, each action item
filed as a GitHub issue with its due date, and lessons tagged as playbook changes collected.

The form is a pause of the post-incident run. A run started from a deployment suspends (its
process exits; the run is rescheduled when the form is submitted), because people may take
days; a run started in-process pauses instead.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Literal, cast

from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel, Field

from incidents import postmortem_report, templates
from incidents.followup_models import ActionItemRecord, Lesson, Proposal
from incidents.models import EventKind, Incident
from incidents.store_protocol import Records
from incidents.timeline_payloads import RunStarted
from integrations.errors import IntegrationError
from tasks.context import RunContext, SecretNotFound
from tasks.forms import prefilled
from tasks.notify import comment_on_issue, notify_slack
from tasks.steps import inline, run_logger, step
from tasks.timeline import record


class ActionItem(BaseModel):
    title: str = Field(min_length=3, max_length=200, pattern=r"\S", description="What must be done.")
    owner: str = Field("", max_length=100, description="Who owns it (e.g. @handle).")
    due: Literal["24h", "1w"] = Field("1w", description="24h: Immediate; 1w: Follow-up (the playbook's horizons).")


class PostmortemInput(RunInput):
    """The post-mortem form; what the record cannot know."""

    completed_by: str = Field(min_length=1, max_length=200, pattern=r"\S",
                              description="Your name: who wrote this post-mortem (required).")
    root_cause: str = Field(min_length=1, max_length=5000, pattern=r"\S", description="The primary cause.")
    users_affected: str = Field("", max_length=300, description="Number or percentage of users affected.")
    business_impact: str = Field("", max_length=2000)
    what_went_well: str = Field("", max_length=3000)
    what_went_badly: str = Field("", max_length=3000)
    lessons: list[Lesson] = Field(default_factory=list, max_length=50)
    action_items: list[ActionItem] = Field(default_factory=list, max_length=50)


def _run_post_incident(name: str, environment: str, incident_id: int) -> tuple[FlowRun | None, str]:
    """The post-incident deployment's new run, or None and why not."""
    if inline():
        return None, "no Prefect API: steps run inline"
    try:
        run = run_deployment(name=name, parameters={"incident_id": incident_id, "environment": environment},
                             timeout=0, as_subflow=False, tags=["post-incident"])
    except Exception as exc:  # noqa: BLE001 - no deployment, API down: the incident is resolved regardless
        return None, f"no deployment {name}" if isinstance(exc, ObjectNotFound) else f"{type(exc).__name__}: {exc}"
    return cast(FlowRun, run), ""  # sync-compatible: a FlowRun when called from sync code


def start_post_incident(ctx: RunContext, incident: Incident) -> str | None:
    """Start the `post-incident/<environment>` deployment for a resolved incident (not for
    drills). Never raises: without the deployment it says how to run it by hand."""
    if incident.alert is not None and incident.alert.drill_id:
        return None
    name = f"post-incident/{ctx.environment}"
    run, why = _run_post_incident(name, ctx.environment, incident.id)
    if run is None:
        run_logger().warning("Post-incident run not started (%s)", why)
        record(ctx, incident.id, "runbook", EventKind.POSTMORTEM_NOT_STARTED,
               f"Post-incident run not started ({why}); start it with `runbooks postmortem {incident.id}`")
        return None
    record(ctx, incident.id, "runbook", EventKind.POSTMORTEM_STARTED, f"Post-incident run {run.name} started",
           RunStarted(flow_run_id=str(run.id)))
    return str(run.id)


def draft(ctx: RunContext, incident: Incident, store: Records) -> str:
    """The post-mortem as far as the record knows it: the form's description."""
    return postmortem_report.render(incident, store.timeline(incident.id), store.approvals(incident.id),
                                   postmortem_report.Answers(), [])


@step("request-postmortem")
def announce(ctx: RunContext, incident: Incident, store: Records) -> None:
    """Register the post-mortem (once) and tell the Documentation role where the form is."""
    run_id = flow_run.get_id()
    if not store.start_postmortem(incident.id, run_id):
        return
    due = postmortem_report.due_at("1w", incident.resolved_at or datetime.now(timezone.utc))
    link = ctx.run_url(run_id)
    notify_slack(
        ctx,
        incident.id,
        f"📝 POST-MORTEM NEEDED\nIssue: {incident.issue_ref}\n"
        f"Service: {templates.slack_text(incident.service)}\n"
        f"Documentation: {ctx.config.roles.mention(ctx.config.roles.documentation)}\nDue: {templates.stamp(due)}\n"
        f"Fill in the form: {link}",
        link=("Open the form", link) if link else None,
    )
    record(ctx, incident.id, "runbook", EventKind.POSTMORTEM_REQUESTED,
           f"Post-mortem requested, due {templates.stamp(due)}")


def wait_for_form(ctx: RunContext, incident: Incident, description: str) -> PostmortemInput | None:
    """The form: suspended when deployed (frees the process), paused otherwise; None at the timeout."""
    known = {"root_cause": incident.root_cause, "users_affected": incident.users_affected,
             "business_impact": incident.impact}
    form = prefilled(PostmortemInput, description, **{k: v for k, v in known.items() if v})
    timeout = ctx.config.post_incident.form_timeout_seconds
    key = f"postmortem-{incident.id}"
    try:
        if deployment.get_id():
            return suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
        poll = ctx.config.approval.poll_seconds  # Prefect types it as int and sleeps it as given
        return pause_flow_run(wait_for_input=form, timeout=timeout, poll_interval=poll,  # type: ignore[call-overload]
                              key=key)
    except FlowPauseTimeout:
        return None


@step("file-action-items")
def file_action_items(ctx: RunContext, incident: Incident, items: list[ActionItem], store: Records,
                      since: datetime) -> list[ActionItemRecord]:
    """Each action item once in the store and once as a GitHub issue with its due date."""
    filed = []
    repo = ctx.config.github.incident_repo
    for item in items:
        row = store.add_action_item(incident.id, item.title.strip(), item.owner.strip() or None, item.due,
                                    postmortem_report.due_at(item.due, since))
        if not row.issue_number:
            body = (
                f"Action item from the post-mortem of incident {incident.issue_ref} "
                f"({templates.markdown_text(incident.service)}, {incident.severity.value}).\n\n"
                f"**Due:** {templates.stamp(row.due_at)} "
                f"({'Immediate, within 24 h' if item.due == '24h' else 'Follow-up, within 1 week'})\n"
                f"**Owner:** {templates.markdown_text(item.owner or 'unassigned')}\n\n"
                "Close this issue when it is done; the incident watch tracks completion and reminds when it is overdue."
            )
            labels = [*ctx.config.post_incident.action_item_labels, f"due:{item.due}", incident.severity.value]
            try:
                with ctx.github() as github:
                    issue = github.create_issue(
                        repo,
                        f"[action item] {templates.issue_title_text(incident.service, incident.severity, item.title)}",
                        body,
                        labels,
                    )
            except (IntegrationError, SecretNotFound) as exc:
                run_logger().error("Action item %r not filed: %s", item.title, exc)
                record(ctx, incident.id, "runbook", EventKind.NOTIFICATION_FAILED, f"Action item not filed: {exc}")
                filed.append(row)
                continue
            store.attach_action_issue(row.id, repo, issue.number, issue.html_url)
            row = replace(row, repo=repo, issue_number=issue.number, issue_url=issue.html_url)
            record(ctx, incident.id, "runbook", EventKind.ACTION_ITEM_FILED,
                   f"Action item filed: {item.title} ({repo}#{issue.number}, due {templates.stamp(row.due_at)})")
        filed.append(row)
    return filed


def proposals_markdown(rows: list[Proposal]) -> str:
    if not rows:
        return "## Proposed playbook updates\n\nNone yet: no lesson has been tagged as a playbook change."
    lines = ["## Proposed playbook updates", "",
             "Lessons learned that post-mortems tagged as changes to the playbook, by section.", ""]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines += ["", f"### {templates.markdown_text(section or 'General', 120)}"]
        lines.append(
            f"- {templates.markdown_text(row.proposal, 1000)} (incident "
            f"#{row.github_issue or row.incident_id}, {row.severity} "
            f"{templates.markdown_text(row.service)}, "
            f"{row.proposed_at:%Y-%m-%d})"
        )
    return "\n".join(lines)


class FiledItem(BaseModel):
    """An action item as filed: its GitHub issue, when one could be opened."""

    title: str
    horizon: str  # 24h | 1w
    due_at: str
    repo: str | None
    issue_number: int | None


class Published(BaseModel):
    """A published post-mortem; the post-incident flow returns it as JSON, with its outcome."""

    incident_id: int
    action_items: list[FiledItem]
    commented: bool
    markdown_chars: int


@step("publish-postmortem")
def publish(ctx: RunContext, incident: Incident, answers: PostmortemInput, store: Records) -> Published:
    logger = run_logger()
    completed = datetime.now(timezone.utc)
    items = file_action_items(ctx, incident, answers.action_items, store, completed)
    told = postmortem_report.Answers.model_validate(answers.model_dump(exclude={"metadata", "completed_by",
                                                                                "action_items"}))
    markdown = postmortem_report.render(incident, store.timeline(incident.id), store.approvals(incident.id), told,
                                        store.action_items(incident.id))
    store.complete_postmortem(incident.id, answers.completed_by.strip(), answers.root_cause.strip(),
                              answers.lessons, markdown, answers.users_affected.strip() or None)
    create_markdown_artifact(markdown=markdown, key=f"postmortem-incident-{incident.id}",
                             description=f"Post-mortem of incident {incident.id} ({incident.service})")
    commented = comment_on_issue(ctx, incident.id, incident.github_repo, incident.github_issue, markdown)
    for lesson in answers.lessons:
        if lesson.playbook_change:
            store.propose(incident.id, lesson.playbook_section.strip() or "General", lesson.lesson.strip())
    create_markdown_artifact(markdown=proposals_markdown(store.proposals(ctx.environment)),
                             key=f"proposed-playbook-updates-{ctx.environment}",
                             description="Lessons learned tagged as playbook changes")
    record(ctx, incident.id, answers.completed_by.strip(), EventKind.POSTMORTEM_COMPLETED,
           f"Post-mortem completed by {answers.completed_by.strip()}: {len(items)} action items, "
           f"{sum(lesson.playbook_change for lesson in answers.lessons)} proposed playbook changes")
    notify_slack(ctx, incident.id, f"📝 POST-MORTEM PUBLISHED\nIssue: {incident.issue_ref}\n"
                                   f"Root Cause: {templates.slack_text(answers.root_cause, 300)}\n"
                                   f"Action items: {len(items)} filed")
    logger.info("Post-mortem of incident %s published; %s action items", incident.id, len(items))
    return Published(incident_id=incident.id, commented=commented, markdown_chars=len(markdown),
                     action_items=[FiledItem(title=i.title, horizon=i.horizon, due_at=str(i.due_at), repo=i.repo,
                                             issue_number=i.issue_number) for i in items])
