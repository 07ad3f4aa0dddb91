"""Game day: break a sandbox or staging target on purpose, let the runbook find and fix it,
and score detection and recovery against the playbook's targets.

    inject the fault -> monitoring notices -> the alert goes through the alert intake ->
    the scenario's runbook runs (approved automatically after a delay, or by a person) ->
    recovery is verified -> the fault is always cleaned up -> scorecard and history
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from incidents.drills import NOTHING, REMEDY, FaultSpec, resolve_fault
from incidents.models import EventKind
from incidents.store_protocol import Records
from tasks.approval import DrillNotAllowed
from tasks.context import RunContext
from tasks.drill import (
    DrillFailed,
    RunEnd,
    check_recovered,
    clean_up,
    follow_runbook,
    inject_fault,
    publish_scorecard,
    raise_alert,
    scorecard,
    unrecovered_outcome,
    wait_for_detection,
)
from tasks.faults import sandbox_url


def _require_recovery(ctx: RunContext, state, alert_key: str) -> None:
    unrecovered = unrecovered_outcome(ctx, alert_key)
    if unrecovered:
        raise DrillFailed(f"the runbook ended without recovering the service ({unrecovered[:300]})")
    if not check_recovered(ctx, state, timeout=60):
        raise DrillFailed("the runbook finished but the fault is still visible")


@flow(name="incident-drill", description="A game day: inject a fault from the catalog, let the alert intake start "
                                         "the runbook, verify recovery, always clean up, and score it.")
def incident_drill(scenario: str = "service-down", environment: str = "sandbox",
                   approval_mode: Literal["auto", "human"] = "auto", approval_delay_seconds: float = 5.0,
                   deadline_minutes: float = 15.0, service: str = "api") -> dict[str, Any]:
    """Args:
        scenario: a scenario (service-down, high-error-rate, database-issues, security-incident) or any fault
            of the catalog (`runbooks drill --list`; docs/judgement.md, "Fault catalog"), e.g. release-then-dependency.
        environment: must say drills_allowed: true in its config.
        approval_mode: auto (the drill approves its own plan after the delay) or human (practise the real gate).
        approval_delay_seconds: how long an automatic approval waits, standing in for a person's reaction.
        deadline_minutes: the whole drill's limit; the fault is cleaned up when it passes.
        service: the target service.
    """
    spec = resolve_fault(scenario)
    ctx = RunContext.load(environment, service)
    if not ctx.config.drills_allowed:
        raise DrillNotAllowed(f"environment {environment!r} does not allow drills (its config says drills_allowed: "
                              "false); nothing was injected")
    if spec.sandbox_only:
        sandbox_url()  # raises FaultNotAvailable before anything is touched
    deadline = deadline_minutes * 60
    drill_id = f"drill-{uuid.uuid4().hex[:10]}"
    store = ctx.store()
    store.start_drill(drill_id, spec.name, spec.scenario, environment, service, approval_mode, approval_delay_seconds,
                      flow_run.get_id())
    injected_at = datetime.now(timezone.utc)
    played = _play(ctx, spec, drill_id, injected_at, deadline)
    card, incident_id = scorecard(ctx, spec, injected_at, played.run, played.alert_key)
    error, cleanup_done = played.error, played.cleanup
    status = "passed" if card.passed and not error else "failed"
    store.finish_drill(drill_id, status, card, error, played.run_id, incident_id)
    if incident_id is not None:
        _close_practice_incident(store, incident_id, drill_id, status, error)
    publish_scorecard(ctx, drill_id, card, cleanup_done)
    result = {"drill_id": drill_id, "status": status, "error": error, "score": card.as_data(), "cleanup": cleanup_done,
              "incident_id": incident_id}
    if status == "failed":
        raise DrillFailed(f"drill {drill_id} ({spec.name}) failed: {error or 'targets or playbook steps missed'}; "
                          f"clean-up: {'; '.join(cleanup_done) or 'nothing to undo'}")
    return result


@dataclass
class _Played:
    run: RunEnd | None = None
    alert_key: str | None = None
    run_id: str | None = None
    error: str | None = None
    cleanup: list[str] = field(default_factory=list)


def _play(ctx: RunContext, spec: FaultSpec, drill_id: str, injected_at: datetime, deadline: float) -> _Played:
    """Inject the fault, wait for its signal, raise the alert and follow the runbook; always
    clean up. Every failure is recorded in the result, never raised."""
    played, state = _Played(), None
    try:
        state = inject_fault(ctx, spec)
        if spec.outcome != NOTHING and not wait_for_detection(ctx, state, timeout=min(deadline, 300)):
            raise DrillFailed(f"the fault's signal never showed within {min(deadline, 300):.0f} s")
        started = raise_alert(ctx, spec, drill_id, state, state.began_at or injected_at)
        played.alert_key, played.run_id = started.alert_key, started.run_id
        played.run = follow_runbook(played.run_id, timeout=deadline)
        if played.run.state != "COMPLETED":
            raise DrillFailed(f"the runbook's run ended {played.run.state}: {played.run.message}")
        if spec.outcome == REMEDY:  # otherwise nothing is to recover: the score says whether it held back
            _require_recovery(ctx, state, played.alert_key)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded, and the fault cleaned up
        played.error = f"{type(exc).__name__}: {exc}"
        get_run_logger().error("Drill %s failed: %s", drill_id, played.error)
    finally:
        if state is not None:
            try:
                played.cleanup = clean_up(ctx, state)
            except Exception as exc:  # noqa: BLE001 - a failed clean-up is the most important thing to report
                played.error = (played.error + "; " if played.error else "") + \
                    f"CLEAN-UP FAILED: {type(exc).__name__}: {exc}"
    return played


def _close_practice_incident(store: Records, incident_id: int, drill_id: str, status: str,
                             error: str | None) -> None:
    """A practice incident the runbook left open (it escalated, or still waits) ends with its drill."""
    note = f"drill {drill_id} {status}" + (f": {error[:300]}" if error else "")
    if store.close(incident_id, "Drill", note, postmortem_needed=False):
        store.add_event(incident_id, "incident-drill", EventKind.DRILL_CLOSED,
                        f"Closed with drill {drill_id} ({status})")
