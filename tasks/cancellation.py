"""What a Cancel means for an incident. Pressing Cancel (UI, API or `runbooks cancel`) moves the
run to Cancelling; the worker stops the run's process and runs the flow's on_cancellation hook,
`record_cancellation`, which writes who cancelled and what had already been done to the
incident timeline and posts a Status Update: a person has the incident now. Before each
approved action the executor asks `raise_if_cancelling`, so that no action starts once a
Cancel is pressed, even in the moment before the process is stopped; so does the approval
gate before it pauses (Prefect refuses to pause or suspend a Cancelling run, and the run would
end Failed). A run whose process the worker has not stopped by then (a worker busy with many
Cancels at once) ends itself: `ended_cancelled` records the Cancel as the hook would and
ends the run Cancelled."""

from __future__ import annotations

import logging
import time
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State, StateType
from prefect.context import FlowRunContext
from prefect.runtime import flow_run as current_run
from prefect.states import Cancelled

from incidents import templates
from incidents.alerts import target_of
from incidents.config import ConfigError
from incidents.errors import RunbookError
from incidents.models import EventKind, Incident
from incidents.store import StoreError
from incidents.store_protocol import Records
from incidents.timeline_payloads import CancelledRun
from tasks.context import PRODUCTION, RunContext, Wiring
from tasks.notify import send_slack

_log = logging.getLogger("runbooks.cancellation")
# The worker stops a cancelled run's process within about a second; a run that is still here
# after this long has no worker to stop it (e.g. it runs in a test's thread) and ends itself.
STOP_WAIT_SECONDS = 10.0
CANCEL_STATES = (StateType.CANCELLING, StateType.CANCELLED)


class RunCancelled(RunbookError):
    """The run was cancelled before the named action: it did not start."""


def _state_of(flow_run_id: str) -> tuple[StateType | None, str]:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return (state.type, state.message or "") if state else (None, "")


def raise_if_cancelling(action: str) -> None:
    """Before an action: if the run is being cancelled, wait for the worker to stop it, and
    never start the action. Outside a flow run (a test calling the executor) there is no Cancel."""
    run_id = current_run.get_id()
    if not run_id:
        return
    state, message = _state_of(run_id)
    if state not in CANCEL_STATES:
        return
    _log.warning("Run cancelled (%s); %s not started", message or "no reason given", action)
    time.sleep(STOP_WAIT_SECONDS)
    raise RunCancelled(f"cancelled before {action}; it was not started")


def cancelling_now() -> bool:
    """Whether this flow run is being cancelled (False outside a flow run)."""
    run_id = current_run.get_id()
    return run_id is not None and _state_of(run_id)[0] in CANCEL_STATES


def ended_cancelled(exc: RunCancelled) -> State:
    """The final state of a run that stopped itself on a Cancel: the Cancel is recorded as the
    on_cancellation hook records it (who, and what was done before), and the run ends Cancelled,
    not Failed. Return it from the flow."""
    context = FlowRunContext.get()
    message = ""
    if context is not None and context.flow_run is not None:
        try:
            message = _state_of(str(context.flow_run.id))[1]
        except Exception as error:  # noqa: BLE001 - the API may be what failed; the record still matters
            _log.warning("could not read who cancelled run %s: %s", context.flow_run.id, error)
        note_cancellation(context.flow_run, message)
    return Cancelled(message=message or f"Cancelled: {exc}")


def _who_and_why(store: Records, run_id: str, message: str) -> tuple[str, str]:
    """Who cancelled and why: as `runbooks cancel` or `/incident cancel` recorded it; a Cancel
    from Prefect's UI or API names no one, and its state message (if any) is quoted as given."""
    request = store.cancel_request(run_id)
    if request is not None:
        return request.requested_by, request.reason
    return "an operator (Prefect UI or API)", message


def _done_so_far(store: Records, incident_id: int, run_id: str) -> list[str]:
    """The actions of the plans this run had approved: not another run's on the same incident
    (a run that joined it, or took over once this one was cancelled while it waited)."""
    mine = {a.plan_digest for a in store.approvals(incident_id) if a.flow_run_id == run_id and a.decision == "approved"}
    return [f"{row.kind} ({row.status}{': ' + row.detail if row.detail else ''})"
            for row in store.action_log(incident_id) if row.plan_digest in mine]


def record_cancellation(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation hook (run by the worker once the run's process is stopped)."""
    run_id = str(flow_run.id)
    try:
        _, message = _state_of(run_id)
    except Exception as exc:  # noqa: BLE001 - the API may be what failed; the record still matters
        message = ""
        _log.warning("could not read who cancelled run %s: %s", run_id, exc)
    note_cancellation(flow_run, message)


def note_cancellation(flow_run: Any, message: str, wiring: Wiring = PRODUCTION) -> None:
    """Free the service, and write and announce who cancelled and what was done before. Also
    called by the incident watch for a run cancelled while suspended at its approval: that run
    has no process, so no worker runs its on_cancellation hook."""
    run_id = str(flow_run.id)
    store = wiring.store()
    params = flow_run.parameters or {}
    try:
        if params.get("environment") and params.get("service"):  # the service is free for the next runbook
            store.release_lease(target_of(params["environment"], params["service"]), run_id)
        incident = store.incident_for_run(run_id)
        if incident is None:
            _log.info("run %s was cancelled before it opened an incident", run_id)
            return
        done = _done_so_far(store, incident.id, run_id)
        who, why = _who_and_why(store, run_id, message)
        note = (f"Runbook run {flow_run.name} cancelled by {who}" + (f" ({why})" if why else "")
                + f". Done before the Cancel: {'; '.join(done) if done else 'nothing was changed'}."
                + " The runbook has stopped: a person has the incident now.")
        if not _recorded(store, incident.id, run_id):  # `runbooks cancel` records a waiting run's Cancel itself
            store.add_event(incident.id, who, EventKind.CANCELLED, note, CancelledRun(flow_run_id=run_id, done=done))
    except StoreError as exc:
        _log.error("Cancel of run %s not recorded in the incident timeline: %s", run_id, exc)
        return
    _post_status(flow_run, incident, note, wiring)


def _recorded(store: Records, incident_id: int, run_id: str) -> bool:
    return any(isinstance(e.data, CancelledRun) and e.data.flow_run_id == run_id for e in store.timeline(incident_id))


def _post_status(flow_run: Any, incident: Incident, note: str, wiring: Wiring) -> None:
    params = flow_run.parameters or {}
    try:
        ctx = RunContext.load(params.get("environment") or incident.environment,
                              params.get("service") or incident.service, wiring)
    except (ConfigError, ValueError) as exc:
        _log.warning("Cancel of incident %s not posted to Slack: %s", incident.id, exc)
        return
    send_slack(ctx, incident.id, templates.status_update(incident, "Runbook cancelled", "a person decides",
                                                         "unchanged", note), logger=_log)
