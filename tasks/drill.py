"""Drill steps: inject, let monitoring notice and alert through the intake, follow the
runbook's run, check recovery, clean up, score and report."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client

from incidents.drills import FaultSpec, history_markdown, score, scorecard_markdown
from incidents.errors import RunbookError
from incidents.followup_models import Scorecard
from incidents.models import EventKind
from incidents.timeline_payloads import Diagnosis
from integrations import http
from tasks.context import RunContext
from tasks.faults import FaultState, cleanup, healed, inject, signal, wait_for
from tasks.steps import run_logger, step

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class DrillFailed(RunbookError):
    pass


@step("inject-fault")
def inject_fault(ctx: RunContext, spec: FaultSpec) -> FaultState:
    run_logger().info("Injecting %s: %s", spec.name, spec.description)
    return inject(ctx, spec)


@step("wait-for-detection")
def wait_for_detection(ctx: RunContext, state: FaultState, timeout: float) -> bool:
    """Poll the signal a monitor would watch until it shows the fault."""
    return wait_for(lambda: signal(ctx, state), timeout)


@dataclass(frozen=True)
class RaisedAlert:
    """The run the intake started for a drill's alert, and the alert's key (`fingerprint:startsAt`)."""

    run_id: str
    alert_key: str


@dataclass(frozen=True)
class RunEnd:
    """How the runbook's run ended: its final state type, when it started (when the fault was
    detected), and its state message."""

    state: str | None
    started: datetime | None
    message: str | None


@step("raise-alert")
def raise_alert(ctx: RunContext, spec: FaultSpec, drill_id: str, state: FaultState,
                injected_at: datetime) -> RaisedAlert:
    """What Alertmanager would do: post the alert to the intake, starting when the fault did."""
    url = os.environ.get("RUNBOOKS_INTAKE_URL", "http://127.0.0.1:8787").rstrip("/")
    token = os.environ.get("RUNBOOKS_ALERT_TOKEN", "")
    starts = injected_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    alert = {"status": "firing", "fingerprint": drill_id, "startsAt": starts,
             "labels": {"alertname": spec.alertname, "service": ctx.service_name, "environment": ctx.environment,
                        "severity": spec.severity, "drill_id": drill_id},
             "annotations": {"summary": f"drill {drill_id}: {spec.description}", **state.annotations}}
    response = http.post(f"{url}/alerts", json=alert, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    if response.status_code != 200 or not response.json().get("started"):
        raise DrillFailed(
            f"the alert intake at {url} did not start a run: HTTP {response.status_code} {response.text[:200]}"
        )
    return RaisedAlert(run_id=str(response.json()["started"][0]["flow_run_id"]), alert_key=f"{drill_id}:{starts}")


@step("follow-runbook")
def follow_runbook(run_id: str, timeout: float) -> RunEnd:
    """Wait for the runbook's run to end; its start time is when the fault was detected."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(UUID(run_id))
            if run.state and run.state.type.value in FINAL or time.monotonic() > deadline:
                break
            time.sleep(1.0)
    return RunEnd(state=run.state.type.value if run.state else None, started=run.start_time,
                  message=run.state.message if run.state else None)


@step("read-runbook-outcome")
def unrecovered_outcome(ctx: RunContext, alert_key: str) -> str | None:
    """None when the runbook's incident records a resolution; otherwise why it ended without
    one (its escalation, or the last step it recorded), so a failed runbook fails the drill
    at once instead of after the recovery wait."""
    store = ctx.store()
    incident = store.incident_for_alert(alert_key)
    if incident is None:
        return "the runbook recorded no incident"
    timeline = store.timeline(incident.id)
    if any(e.kind == EventKind.RESOLVED for e in timeline):
        return None
    last = next((e for e in reversed(timeline) if e.kind in (EventKind.ESCALATED, EventKind.ACTION_FAILED)), None) \
        or (timeline[-1] if timeline else None)
    return f"{last.kind}: {last.message}" if last else "the incident's timeline is empty"


@step("check-recovered")
def check_recovered(ctx: RunContext, state: FaultState, timeout: float) -> bool:
    return wait_for(lambda: healed(ctx, state), timeout, poll=1.0)


@step("clean-up-fault")
def clean_up(ctx: RunContext, state: FaultState) -> list[str]:
    done = cleanup(ctx, state)
    run_logger().info("Clean-up: %s", "; ".join(done) or "nothing left to undo")
    return done


def scorecard(ctx: RunContext, spec: FaultSpec, injected_at: datetime, run: RunEnd | None, alert_key: str | None
              ) -> tuple[Scorecard, int | None]:
    """Score the drill from the runbook's own record: its incident, timeline and approval."""
    store = ctx.store()
    incident = store.incident_for_alert(alert_key) if alert_key else None
    steps, approved_at, recovered_at, outcome, judgement = [], None, None, None, None
    if incident:
        timeline = store.timeline(incident.id)
        steps = [e.kind for e in timeline]
        recovered_at = next((e.at for e in timeline if e.kind == EventKind.RECOVERED), None)
        approvals = [a for a in store.approvals(incident.id) if a.decision == "approved"]
        approved_at = approvals[0].decided_at if approvals else None
        ended = (run.state or "").lower() if run else ""
        outcome = "resolved" if "resolved" in steps else ended or None
        judgement = next((e.data.judgement for e in reversed(timeline) if isinstance(e.data, Diagnosis)), None)
    return score(spec, injected_at, run.started if run else None, approved_at, recovered_at, steps, outcome,
                 judgement), incident.id if incident else None


@step("publish-scorecard")
def publish_scorecard(ctx: RunContext, drill_id: str, card: Scorecard, cleanup_done: list[str]) -> None:
    create_markdown_artifact(markdown=scorecard_markdown(drill_id, ctx.environment, card, cleanup_done),
                             key=f"{drill_id}-scorecard", description=f"Drill {drill_id} scorecard")
    history = ctx.store().drill_history(50)
    create_table_artifact(
        key="drill-history",
        description="Past drills, newest first",
        table=[
            {
                "started": f"{r.started_at:%Y-%m-%d %H:%M}",
                "fault": r.fault,
                "scenario": r.scenario,
                "environment": r.environment,
                "status": r.status,
                "detect_s": r.score.time_to_detect_s if r.score else None,
                "recover_s": r.score.time_to_recover_s if r.score else None,
                "passed": bool(r.score and r.score.passed),
            }
            for r in history
        ],
    )
    create_markdown_artifact(markdown=history_markdown(history), key="drill-trend",
                             description="Drill trend per scenario")
