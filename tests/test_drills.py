"""Drills end to end: each fault of the catalog injected in the sandbox, detected through the
alert intake, fixed by its runbook with automatic approval, scored and cleaned up."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from tests.conftest import APP_ROLE
from tests.test_intake import TOKEN, _runs, deployments, live_intake  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("prefect_server")


def _run_until_suspended(run_flow, fn, run) -> None:
    """A worker's process ends when its run suspends (waiting for approval); resuming the run
    schedules it again, and the poller below picks it up again."""
    from prefect.exceptions import Pause

    try:
        run_flow(fn, flow_run=run, parameters=run.parameters)
    except Pause:
        pass


@pytest.fixture
def inline_worker(deployments):  # noqa: F811
    """Runs what the intake schedules, on threads of this process, as a worker would."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.states import Pending

    from flows.database_issues import database_issues
    from flows.high_error_rate import high_error_rate
    from flows.security_incident import security_incident
    from flows.service_down import service_down

    flows = {deployments[f.name]: f for f in (service_down, high_error_rate, database_issues, security_incident)}
    stop, threads = threading.Event(), []
    with get_client(sync_client=True) as client:  # runs an earlier test scheduled are not this test's to run
        for dep_id in flows:
            for run in _runs(dep_id):
                if run.state.is_scheduled():
                    client.delete_flow_run(run.id)

    def loop() -> None:
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                for dep_id, fn in flows.items():
                    for run in _runs(dep_id):
                        if (
                            run.state.is_scheduled()
                            and client.set_flow_run_state(run.id, Pending()).status.value == "ACCEPT"
                        ):
                            thread = threading.Thread(target=_run_until_suspended, args=(run_flow, fn, run),
                                                      daemon=True)
                            thread.start()
                            threads.append(thread)
                time.sleep(0.3)

    poller = threading.Thread(target=loop, daemon=True)
    poller.start()
    yield
    stop.set()
    poller.join(10)
    for thread in threads:
        thread.join(60)


@pytest.fixture
def drill_env(live_intake, inline_worker, monkeypatch):  # noqa: F811
    monkeypatch.setenv("RUNBOOKS_INTAKE_URL", live_intake)
    monkeypatch.setenv("RUNBOOKS_ALERT_TOKEN", TOKEN)


def _drill(**params):
    from flows.incident_drill import incident_drill

    return incident_drill(approval_delay_seconds=0.5, deadline_minutes=2, **params)


def _image(world) -> str:
    return world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("fault", ["bad-deploy", "error-spike", "pg-lock", "pg-connections", "pg-long-query",
                                   "leaked-credential", "two-bad-releases", "bad-deploy-and-frontend-broken",
                                   "node-not-ready"])
def test_every_fault_is_drilled_end_to_end(world, store, drill_env, app_database_url, fault):
    from incidents.store import DrillStore

    result = _drill(scenario=fault)
    card = result["score"]
    assert result["status"] == "passed", result
    assert card["fault"] == fault and card["runbook_outcome"] == "resolved"
    assert 0 < card["time_to_detect_s"] < 60 and card["mttd_met"]
    assert card["time_to_approve_s"] is not None and card["time_to_approve_s"] >= 0.5
    assert card["time_to_recover_s"] >= card["time_to_detect_s"] and card["mttr_met"]
    assert all(card["steps"].values()), card["steps"]
    row = DrillStore().drill(result["drill_id"])
    assert row.status == "passed" and row.score.passed and row.incident_id == result["incident_id"]
    approval = store.approvals(result["incident_id"])[0]
    assert approval.automatic and approval.approver == f"drill {result['drill_id']}"
    # cleaned up: nothing of the fault is left
    assert not _image(world).endswith("-broken")
    assert not world.cluster.get("deployments", "sandbox", "frontend")["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith("-broken")
    assert world.services["api"].load_rps == 50
    with psycopg.connect(app_database_url, autocommit=True) as conn:
        assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone() == (-1,)
        assert conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (APP_ROLE,)).fetchone()[0] == 0
    assert not world.cluster.list("networkpolicies", "sandbox")
    assert world.cluster.get("configmaps", "sandbox", "api-config")["data"]["log_level"] == "info"
    assert world.pagerduty.events == [], "a drill never wakes anyone through PagerDuty"


def test_a_drill_whose_runbook_fails_still_cleans_up_and_records_it(world, drill_env):
    from incidents.store import DrillStore
    from sandbox.http import Fault
    from tasks.drill import DrillFailed

    world.faults.set("github", Fault(status=500))  # the rollback workflow cannot be dispatched
    with pytest.raises(DrillFailed, match="failed") as err:
        _drill(scenario="service-down")
    assert "image restored" in str(err.value)
    assert "ended without recovering the service (escalated" in str(err.value)
    assert not _image(world).endswith("-broken")
    drill_id = str(err.value).split()[1]
    row = DrillStore().drill(drill_id)
    assert row.status == "failed" and row.error and row.score.runbook_outcome != "resolved"


def test_a_drill_is_refused_where_drills_are_not_allowed(world, drill_env):
    from tasks.approval import DrillNotAllowed

    before = _image(world)
    with pytest.raises(DrillNotAllowed, match="drills_allowed: false"):
        _drill(scenario="service-down", environment="no-drills")
    assert _image(world) == before and world.slack_messages == []


def test_human_approval_mode_waits_for_a_person(world, drill_env):
    from tests.conftest import FlowThread

    run = FlowThread(_drill, scenario="bad-deploy", approval_mode="human")
    paused = run.wait_paused()
    run.resume(paused.id, approve=True, approver="nina", reason="game day")
    result = run.join(120)
    assert result["status"] == "passed"
    assert result["score"]["time_to_approve_s"] > 0
