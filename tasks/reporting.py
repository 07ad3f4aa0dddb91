"""Reports as Prefect markdown artifacts, mirrored to the incident issue."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from incidents.models import Incident
from incidents.redaction import redact
from tasks.context import RunContext
from tasks.notify import comment_on_issue
from tasks.steps import inline


def publish_report(ctx: RunContext, incident: Incident, kind: str, markdown: str) -> None:
    """`kind` names the report (diagnosis, plan, ...); the artifact key is stable per incident.
    A plain call, not a task run: the artifact is the run's (its Artifacts tab), as before."""
    markdown = redact(markdown)
    if not inline():
        create_markdown_artifact(markdown=markdown, key=f"incident-{incident.id}-{kind}",
                                 description=f"{kind.title()} for incident {incident.id} ({incident.service})")
    comment_on_issue(ctx, incident.id, incident.github_repo, incident.github_issue, markdown)
