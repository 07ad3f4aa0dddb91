"""Notifications. A notification failure never stops remediation: it is logged and written
to the incident timeline, and the run goes on."""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from incidents import templates
from incidents.config import EnvironmentConfig
from incidents.models import EventKind, SlackThread
from incidents.redaction import redact
from incidents.store import StoreError
from incidents.templates import markdown_text, slack_blocks, thread_parent
from integrations.errors import IntegrationError
from integrations.slack import SlackApp, SlackThreads, SlackWebhook
from tasks.context import RunContext, SecretNotFound, resolve_secret
from tasks.steps import run_logger
from tasks.timeline import record

_NOTIFY_ERRORS = (IntegrationError, SecretNotFound, StoreError, ValueError)
_log = logging.getLogger("runbooks.notify")


def send_slack(ctx: RunContext, incident_id: int, text: str, link: tuple[str, str] | None = None,
               security: bool = False, logger: logging.Logger | logging.LoggerAdapter = _log,
               buttons: list[dict] | None = None) -> bool:
    """Post a template message about an incident and note it on the timeline; False (never an
    exception) if it failed. Plain, so that the intake can use it outside a flow run.

    With a Slack app the incident's first message opens its thread and every later one goes
    into it, the parent kept current; `security` messages go to the security team's channel.
    With incoming webhooks every message is posted flat. `buttons` (interactive) need the app."""
    text = redact(text)
    headline = text.splitlines()[0]
    try:
        if ctx.config.slack.app:
            with ctx.slack_app() as app:
                _post_in_thread(ctx, app, incident_id, text, slack_blocks(text, link, buttons), security, logger)
        else:
            with ctx.slack(ctx.config.slack.security_webhook_secret if security else None) as webhook:
                webhook.post(text, slack_blocks(text, link))
    except _NOTIFY_ERRORS as exc:
        logger.warning("Slack notification %r not delivered: %s", headline, exc)
        record(ctx, incident_id, "runbook", EventKind.NOTIFICATION_FAILED, f"Slack: {headline} not delivered: {exc}")
        return False
    record(ctx, incident_id, "runbook", EventKind.NOTIFIED, f"Slack: {headline}")
    return True


def post_notice(config: EnvironmentConfig, text: str) -> None:
    """A message that belongs to no incident (an alert that could not start a run): top level in
    the incident channel, by the app or the webhook. Raises IntegrationError or SecretNotFound."""
    slack, text = config.slack, redact(text)
    if slack.app:
        with SlackApp(slack.api_url, resolve_secret(slack.bot_token_secret or "")) as app:
            app.post(slack.channel or "", text, slack_blocks(text))
    else:
        with SlackWebhook(resolve_secret(slack.webhook_secret or "")) as webhook:
            webhook.post(text)


def _post_in_thread(ctx: RunContext, app: SlackThreads, incident_id: int, text: str, blocks: list[dict],
                    security: bool, logger: logging.Logger | logging.LoggerAdapter) -> None:
    slack = ctx.config.slack
    if security:
        app.post(slack.security_channel or slack.channel or "", text, blocks)
        return
    store = ctx.store()
    thread = store.slack_thread(incident_id)
    if thread is None:  # the parent: the incident's own buttons (Acknowledge, Resolve) go with it
        posted = app.post(slack.channel or "", text, templates.with_buttons(
            blocks, templates.incident_buttons(store.get(incident_id))))
        if not store.start_slack_thread(incident_id, posted.channel, posted.ts, text):
            logger.warning("Incident %s: another message opened its Slack thread first", incident_id)
        return
    app.post(thread.channel, text, blocks, thread_ts=thread.ts)
    try:
        _refresh_parent(ctx, app, incident_id, thread)
    except _NOTIFY_ERRORS as exc:  # the message itself arrived: only the parent's status is stale
        logger.warning("Incident %s: Slack thread parent not updated: %s", incident_id, exc)


def _refresh_parent(ctx: RunContext, app: SlackThreads, incident_id: int, thread: SlackThread) -> None:
    """Show the incident's current status and severity on the thread's parent message."""
    store = ctx.store()
    incident = store.get(incident_id)
    roles = ctx.config.roles
    commander = roles.mention(roles.holder("commander", store.assigned_roles(incident_id)))
    current = thread_parent(thread.parent, incident, commander)
    if current != thread.parent and store.set_slack_parent(incident_id, thread.parent, current):
        app.update(thread.channel, thread.ts, current,
                   templates.with_buttons(slack_blocks(current), templates.incident_buttons(incident)))


def notify_slack(ctx: RunContext, incident_id: int, text: str, link: tuple[str, str] | None = None,
                 security: bool = False, buttons: list[dict] | None = None) -> bool:
    """`send_slack` with the run's logger. A plain call, not a task run: a notification is on the
    incident's timeline and in Slack, and three task runs per run cost the server their events
    (docs/benchmarks.md, "What a run costs")."""
    return send_slack(ctx, incident_id, text, link, security, run_logger(), buttons)


def notify_security_team(ctx: RunContext, incident_id: int, text: str) -> bool:
    """The security team's own Slack channel; the incident channel when none is configured."""
    slack = ctx.config.slack
    if (slack.security_channel if slack.app else slack.security_webhook_secret) is None:
        text = "[for the security team] " + text
        return notify_slack(ctx, incident_id, text)
    return notify_slack(ctx, incident_id, text, security=True)


def add_comment(ctx: RunContext, incident_id: int, repo: str | None, number: int | None, body: str,
                logger: logging.Logger | logging.LoggerAdapter = _log) -> bool:
    """Add a comment to the incident issue; False (never an exception) if it failed."""
    if not repo or not number:
        return False
    try:
        with ctx.github() as github:
            github.comment(repo, number, redact(body))
    except _NOTIFY_ERRORS as exc:
        logger.warning("Comment on %s#%s not added: %s", repo, number, exc)
        record(ctx, incident_id, "runbook", EventKind.NOTIFICATION_FAILED,
               f"GitHub comment on #{number} not added: {markdown_text(exc, 300)}")
        return False
    return True


def refresh_issue(ctx: RunContext, incident_id: int, logger: logging.Logger | logging.LoggerAdapter = _log) -> bool:
    """The incident's issue rewritten in place from the record, so that it tells what the store
    knows: the body (status, severity, duration, commander, key moments, root cause), the
    title's severity, and the severity labels (labels people added stay). False (never an
    exception) if it failed."""
    try:
        store = ctx.store()
        incident = store.get(incident_id)
        repo, number = incident.github_repo, incident.github_issue
        if not repo or not number:
            return False
        summary = templates.summary_of(incident.title)
        body = templates.issue_body(incident, summary, ctx.config.roles.table(store.assigned_roles(incident_id)),
                                    ctx.config.escalation.policy(incident.severity),
                                    moments=templates.key_moments(store.timeline(incident_id)),
                                    now=datetime.now(timezone.utc))
        with ctx.github() as github:
            current = github.get_issue(repo, number)
            kept = [label for label in current.labels if label not in templates.SEVERITY_LABELS]
            github.update_issue(repo, number, title=redact(templates.issue_title(incident, summary)),
                                body=redact(body), labels=list(dict.fromkeys([*incident.severity.labels, *kept])))
    except _NOTIFY_ERRORS as exc:
        logger.warning("Issue of incident %s not brought up to date: %s", incident_id, exc)
        record(ctx, incident_id, "runbook", EventKind.NOTIFICATION_FAILED,
               f"GitHub issue not brought up to date: {markdown_text(exc, 300)}")
        return False
    return True


def comment_on_issue(ctx: RunContext, incident_id: int, repo: str | None, number: int | None, body: str) -> bool:
    """`add_comment` with the run's logger (a plain call, as notify_slack)."""
    return add_comment(ctx, incident_id, repo, number, body, run_logger())
