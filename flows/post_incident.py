"""The playbook's Post-Incident Process: the Incident Timeline from the record, the impact,
the actions taken with their approvals; a form for root cause, lessons learned and action
items; the post-mortem in the Incident Issue Template's form (artifact and issue comment);
each action item filed as a GitHub issue with its due date; playbook changes collected.

Started when an incident resolves; runnable by hand for any incident
(`runbooks postmortem <incident>`, or the `post-incident/<environment>` deployment)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from incidents.models import EventKind, Outcome
from tasks.context import Scope
from tasks.postmortem import announce, draft, publish, wait_for_form
from tasks.timeline import record


@flow(name="post-incident", persist_result=True,
      description="Build the post-mortem from the incident record, ask the people for root cause, lessons and action "
                  "items, publish it and file the action items.")
def post_incident(incident_id: int, environment: str = "sandbox") -> dict[str, Any]:
    """Args:
        incident_id: the incident (see `runbooks incidents`).
        environment: the incident's environment.
    """
    logger = get_run_logger()
    scope = Scope.load(environment)
    store = scope.store()
    incident = store.get(incident_id)
    if incident.environment != environment:
        raise ValueError(f"incident {incident_id} belongs to environment {incident.environment!r}, not {environment!r}")
    ctx = scope.ctx(incident.service)
    done = store.postmortem(incident_id)
    if done and done.completed_at:
        logger.info("The post-mortem of incident %s was completed by %s; publishing it again", incident_id,
                    done.completed_by)
        create_markdown_artifact(markdown=done.markdown or "", key=f"postmortem-incident-{incident_id}",
                                 description=f"Post-mortem of incident {incident_id} ({incident.service})")
        return {"incident_id": incident_id, "outcome": Outcome.ALREADY_COMPLETED}
    if incident.resolved_at is None:
        logger.warning("Incident %s is still open; the post-mortem describes it as far as it went", incident_id)
    announce(ctx, incident, store)
    description = ("### Post-mortem: fill in what the record cannot know\n\nThe draft below comes from the incident "
                   "record. Root cause and your name are required; add lessons (tick *playbook change* to propose "
                   "a playbook update) and action items (24h or 1w).\n\n" + draft(ctx, incident, store))
    answers = wait_for_form(ctx, incident, description)
    if answers is None:
        record(ctx, incident_id, "runbook", EventKind.POSTMORTEM_WAITING,
               "Post-mortem form not answered before the run's limit")
        return {"incident_id": incident_id, "outcome": Outcome.FORM_TIMED_OUT}
    published = publish(ctx, store.get(incident_id), answers, store)
    return {**published.model_dump(mode="json"), "outcome": Outcome.PUBLISHED}
