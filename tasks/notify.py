"""Notifications. A notification failure never stops remediation: it is logged and written
to the incident timeline, and the run goes on."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from incidents.store import StoreError
from incidents.templates import markdown_text, slack_blocks
from integrations.errors import IntegrationError
from tasks.context import RunContext, SecretNotFound
from tasks.timeline import record

_NOTIFY_ERRORS = (IntegrationError, SecretNotFound, StoreError, ValueError)


@task(name="notify-slack", cache_policy=NO_CACHE)
def notify_slack(ctx: RunContext, incident_id: int, text: str, link: tuple[str, str] | None = None,
                 webhook_secret: str | None = None) -> bool:
    """Post a template message to the incident channel (or the webhook named by
    `webhook_secret`); False (never an exception) if it failed."""
    logger = get_run_logger()
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


def notify_security_team(ctx: RunContext, incident_id: int, text: str) -> bool:
    """The security team's own Slack target; the incident channel when none is configured."""
    target = ctx.config.slack.security_webhook_secret
    if target is None:
        text = "[for the security team] " + text
    return notify_slack(ctx, incident_id, text, webhook_secret=target)


@task(name="comment-on-issue", cache_policy=NO_CACHE)
def comment_on_issue(ctx: RunContext, incident_id: int, repo: str | None, number: int | None, body: str) -> bool:
    """Add a comment to the incident issue; False (never an exception) if it failed."""
    if not repo or not number:
        return False
    try:
        with ctx.github() as github:
            github.comment(repo, number, body)
    except _NOTIFY_ERRORS as exc:
        get_run_logger().warning("Comment on %s#%s not added: %s", repo, number, exc)
        record(ctx, incident_id, "runbook", "notification_failed",
               f"GitHub comment on #{number} not added: {markdown_text(exc, 300)}")
        return False
    return True
