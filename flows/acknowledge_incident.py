"""Acknowledge an incident from the Prefect UI (the CLI: `runbooks ack`): escalation stops."""

from __future__ import annotations

from prefect import flow

from tasks.watch import acknowledge


@flow(name="acknowledge-incident", description="Acknowledge an incident: you are on it; escalation stops.")
def acknowledge_incident(incident_id: int, acknowledged_by: str, environment: str = "sandbox") -> bool:
    """Args:
        incident_id: the incident (see `runbooks incidents`).
        acknowledged_by: your name.
        environment: the incident's environment.
    """
    return acknowledge(environment, incident_id, acknowledged_by)
