"""Notifications. A notification failure never stops remediation: it is logged and written
to the incident timeline, and the run goes on."""

from __future__ import annotations

import logging

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from incidents.redaction import redact
from incidents.store import StoreError
from incidents.templates import markdown_text, slack_blocks
from integrations.errors import IntegrationError
from tasks.context import RunContext, SecretNotFound
from tasks.timeline import record

_NOTIFY_ERRORS = (IntegrationError, SecretNotFound, StoreError, ValueError)
_log = logging.getLogger("runbooks.notify")


def send_slack(ctx: RunContext, incident_id: int, text: str, link: tuple[str, str] | None = None,
               webhook_secret: str | None = None, logger: logging.Logger | logging.LoggerAdapter = _log) -> bool:
    """Post a template message to the incident channel (or the webhook named by
    `webhook_secret`) and note it on the timeline; False (never an exception) if it failed.
    Plain, so that the intake can use it outside a flow run."""
    text = redact(text)
    headline = text.splitlines()[0]
    try:
        with ctx.slack(webhook_secret) as webhook:
            webhook.post(text, slack_blocks(text, link))
    except _NOTIFY_ERRORS as exc:
        logger.warning("Slack notification %r not delivered: %s", headline, exc)
        record(ctx, incident_id, "runbook", "notification_failed", f"Slack: {headline} not delivered: {exc}")
        return False
    record(ctx, incident_id, "runbook", "notified", f"Slack: {headline}")
    return True


@task(name="notify-slack", cache_policy=NO_CACHE)
def notify_slack(ctx: RunContext, incident_id: int, text: str, link: tuple[str, str] | None = None,
                 webhook_secret: str | None = None) -> bool:
    """`send_slack` as a task of the run."""
    return send_slack(ctx, incident_id, text, link, webhook_secret, get_run_logger())


def notify_security_team(ctx: RunContext, incident_id: int, text: str) -> bool:
    """The security team's own Slack target; the incident channel when none is configured."""
    target = ctx.config.slack.security_webhook_secret
    if target is None:
        text = "[for the security team] " + text
    return notify_slack(ctx, incident_id, text, webhook_secret=target)


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
        record(ctx, incident_id, "runbook", "notification_failed",
               f"GitHub comment on #{number} not added: {markdown_text(exc, 300)}")
        return False
    return True


@task(name="comment-on-issue", cache_policy=NO_CACHE)
def comment_on_issue(ctx: RunContext, incident_id: int, repo: str | None, number: int | None, body: str) -> bool:
    """`add_comment` as a task of the run."""
    return add_comment(ctx, incident_id, repo, number, body, get_run_logger())
