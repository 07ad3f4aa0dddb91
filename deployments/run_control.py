"""Cancel a runbook run through Prefect's API, as the UI's Cancel does, on a person's name
(`runbooks cancel`, `/incident cancel`).

A running run goes to Cancelling: its worker stops the process and the flow's cancellation hook
writes the timeline entry. A run waiting (paused for its approval, or scheduled) has no process
and no hook runs: it is set Cancelled at once, and the timeline entry is written (and the
service's lease given back) here."""

from __future__ import annotations

from typing import Any

from deployments.prefect_api import PrefectApi
from incidents.alerts import target_of
from incidents.errors import RunbookError
from incidents.models import EventKind
from incidents.redaction import redact
from incidents.store_protocol import Records
from incidents.timeline_payloads import CancelledRun

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
WAITING = ("PAUSED", "SCHEDULED")


class CancelRefused(RunbookError):
    """Prefect did not accept the Cancel; the message is its reason."""


def cancel_run(prefect: PrefectApi, store: Records, run: dict[str, Any], who: str, reason: str) -> bool:
    """Cancel `run` (a flow run as the API returns it); True when it was waiting and is now
    Cancelled, False when it is Cancelling (its worker stops it). Raises CancelRefused."""
    message = redact(f"Cancelled by {who}: {reason}" if reason else f"Cancelled by {who}")  # what the UI shows
    request = store.request_cancel(run["id"], who, reason)  # what the run's on_cancellation hook reads
    waiting = run["state"]["type"] in WAITING
    state = {"type": "CANCELLED" if waiting else "CANCELLING", "name": "Cancelled" if waiting else "Cancelling",
             "message": message}
    # a call that fails on the way may still have reached Prefect: its request stays
    result = prefect.call("POST", f"/flow_runs/{run['id']}/set_state", json={"state": state, "force": waiting}).json()
    if result.get("status") != "ACCEPT":
        store.withdraw_cancel(request)  # a later Cancel from the UI must not be put in this person's name
        raise CancelRefused(str((result.get("details") or {}).get("reason", result.get("status"))))
    if waiting:
        record_waiting_cancel(store, run, who, message)
    return waiting


def record_waiting_cancel(store: Records, run: dict[str, Any], who: str, message: str) -> None:
    """The timeline entry (and the lease given back) for a run cancelled while it waited."""
    params = run.get("parameters") or {}
    if params.get("environment") and params.get("service"):  # the service is free for the next runbook
        store.release_lease(target_of(params["environment"], params["service"]), run["id"])
    incident = store.incident_for_run(run["id"])
    if incident is not None:
        store.add_event(incident.id, who, EventKind.CANCELLED, f"Runbook run {run['name']} cancelled while it "
                        f"was {run['state']['name'].lower()} ({message}); nothing was changed by it.",
                        CancelledRun(flow_run_id=run["id"]))
