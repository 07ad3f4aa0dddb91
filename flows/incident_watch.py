"""The incident watch, every minute: escalation of unacknowledged incidents per the
Escalation Matrix, the Status Update cadence, and post-incident reminders. It runs beside the
runbooks, so escalation goes on while a runbook waits for an approval."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.watch import sweep


@flow(name="incident-watch", description="Escalate unacknowledged incidents, post periodic Status Updates, remind "
                                         "about overdue post-mortems and action items.")
def incident_watch(environment: str = "sandbox") -> dict[str, Any]:
    """Args:
        environment: the environment whose incidents are watched.
    """
    return sweep(environment).model_dump(mode="json")
