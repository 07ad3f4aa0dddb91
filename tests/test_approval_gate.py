"""The gate's drill path: automatic approval exists for drills only, and is recorded as such."""

from __future__ import annotations

import psycopg
import pytest
from prefect import flow

from incidents.followups import RunbookStore
from incidents.models import Severity
from incidents.plans import Plan, PlannedAction, require_grant
from incidents.vocabulary import DetectedBy

pytestmark = pytest.mark.usefixtures("prefect_server")


@flow(name="gate-under-test")
def gate(environment: str, drill: str | None) -> dict:
    from tasks.approval import request_approval
    from tasks.context import RunContext

    ctx = RunContext.load(environment, "api")
    incident = ctx.store().open_incident(dedup_key=f"gate:{environment}:{drill}", scenario="service-down",
                                         service="api", environment=environment, severity=Severity.P3, title="t",
                                         detected_by=DetectedBy.RUNBOOK, flow_run_id=None, alert=None)
    action = PlannedAction("rollout_restart", "deployment/api", "3 pods", "replaced", "kubectl rollout restart",
                           {"namespace": "sandbox", "deployment": "api"})
    plan = Plan(incident.id, "api", environment, (action,))
    decision = request_approval(ctx, incident, plan, auto_approve_for_drill=drill)
    require_grant(decision.grant, action)
    return {"incident": incident.id, "automatic": decision.automatic, "approver": decision.approver}


def test_a_drill_may_approve_its_own_plan_and_it_is_recorded(world, store):
    result = gate("sandbox", "drill-42")
    assert result["automatic"] and result["approver"] == "drill drill-42"
    approval = store.approvals(result["incident"])[0]
    assert approval.automatic and approval.decision == "approved"
    event = next(e for e in store.timeline(result["incident"]) if e.kind == "approval_approved")
    assert "(automatic, drill)" in event.message
    assert not any(m["text"].startswith("⏸️") for m in world.slack_messages), "an automatic approval asks nobody"


def test_auto_approval_is_refused_where_drills_are_not_allowed(world, store):
    from tasks.approval import DrillNotAllowed

    before = len(store.list(limit=1000))
    with pytest.raises(DrillNotAllowed, match="does not allow drills"):
        gate("no-drills", "drill-43")
    opened = store.list(limit=1)[0]
    assert len(store.list(limit=1000)) == before + 1 and store.approvals(opened.id) == []


@flow(name="act-under-test")
def act(environment: str, repeat: int, interrupt: bool = False) -> dict:
    """Execute one approved rollout restart `repeat` times, as a retry or a re-run would."""
    from incidents.plans import Grant
    from tasks.context import RunContext
    from tasks.remedies import execute

    ctx = RunContext.load(environment, "api")
    store = ctx.store()
    incident = store.open_incident(dedup_key=f"act:{interrupt}", scenario="service-down", service="api",
                                   environment=environment, severity=Severity.P1, title="t",
                                   detected_by=DetectedBy.RUNBOOK, flow_run_id=None, alert=None)
    action = PlannedAction("rollout_restart", "deployment/api", "3 pods", "replaced", "kubectl rollout restart",
                           {"namespace": "sandbox", "deployment": "api"})
    plan = Plan(incident.id, "api", environment, (action,))
    grant = Grant.issue(plan, "tess", "test")
    details = []
    for _ in range(repeat):
        details += [r.detail for r in execute(ctx, plan, grant)]
        if interrupt:  # as if the process died after acting and before recording it
            with psycopg.connect(RunbookStore().url, autocommit=True) as conn:  # the real store's own table
                conn.execute("UPDATE action_log SET status = 'started', finished_at = NULL WHERE plan_digest = %s",
                             (plan.digest,))
    return {"incident": incident.id, "details": details}


def _revision(world) -> str:
    return world.cluster.get("deployments", "sandbox", "api")["metadata"]["annotations"][
        "deployment.kubernetes.io/revision"]


def test_an_approved_action_runs_once_however_often_it_is_executed(world, store):
    before = _revision(world)
    result = act("sandbox", repeat=3)
    assert int(_revision(world)) == int(before) + 1, "restarted exactly once"
    assert result["details"][0].startswith("restartedAt=")
    assert all("recognised and skipped" in d for d in result["details"][1:]), result["details"]
    log = store.action_log(result["incident"])
    assert [(e.status, e.attempts) for e in log] == [("done", 3)]


def test_an_interrupted_action_checks_its_target_before_repeating(world, store):
    before = _revision(world)
    result = act("sandbox", repeat=2, interrupt=True)
    assert int(_revision(world)) == int(before) + 1, "the interrupted restart was not repeated"
    assert "already restarted" in result["details"][1], result["details"]
