"""Resolve an incident by hand from the Prefect UI (the CLI: `runbooks resolve`): the
Resolution message, the issue closed with the Resolution template, the post-mortem started."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.watch import resolve_by_hand


@flow(name="resolve-incident", description="Resolve an incident by hand: Resolution message, issue closed, "
                                           "post-mortem started; a runbook still waiting for approval stops.")
def resolve_incident(incident_id: int, resolved_by: str, note: str, environment: str = "sandbox") -> dict[str, Any]:
    """Args:
        incident_id: the incident (see `runbooks incidents --open`).
        resolved_by: your name.
        note: how it was resolved (goes into the Resolution message and the issue).
        environment: the incident's environment.
    """
    return resolve_by_hand(environment, incident_id, resolved_by, note).model_dump(mode="json")
