"""The `runbooks-warm` worker (deployments/warm_worker.py) on the production-shaped stack
(tests/stack.py): Cancel stops a runbook, pool pause and concurrency limits hold, a
deployment's job_variables reach the run, a killed run is Crashed, and the worker outlives
an API outage."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest
import yaml

from deployments.warm_worker import CANCEL_GRACE_SECONDS
from integrations import http
from tests.conftest import break_api
from tests.test_scale_out import _run, _state, _until

FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# How soon after a Cancel the run's process must be gone. The run stops acting at the SIGTERM;
# the process then ends through Prefect's own exit, which joins the run's heartbeat thread (it
# sleeps in 1 s steps: 0.7 s of a 1.0 s exit on an idle machine, seen with py-spy) and flushes
# its logs; under CI (three lanes on two cores) every step of it takes two to three times as
# long. CI saw 3.3 s twice, while probes still held the exit (how much of that was the probe is
# not known). A process that waits on anything with a timeout (a probe: 2-60 s; the SIGKILL
# fallback: 5 s) still fails.
CANCEL_GONE_SECONDS = 4.0


def _flow_run(api: str, run_id: str) -> dict:
    return http.get(f"{api}/flow_runs/{run_id}", timeout=30).json()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class _HealthLock:
    """Holds `orders` locked, so the api's /health fails: a runbook's verification goes on polling."""

    def __init__(self, url: str):
        self.conn = psycopg.connect(url, autocommit=False)
        self.conn.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def _into_verification(api: str, world, store, app_database_url: str) -> tuple[str, int, _HealthLock]:
    """A service-down run, approved, whose rollback is done and whose verification keeps
    failing (the database behind /health is locked). Returns the run, its incident, the lock."""
    break_api(world)
    run_id = _run(api, {"service": "api", "environment": "sandbox"})
    assert _until(api, run_id, ("PAUSED", "FAILED", "CRASHED")) == "PAUSED"
    incident_id = store.approval_for_run(run_id).incident_id
    lock = _HealthLock(app_database_url)
    answer = http.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "quinn", "reason": "warm worker test"}}).json()
    assert answer["status"] == "ACCEPT", answer
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if [e for e in store.action_log(incident_id) if e.status == "done"]:
            break
        assert _state(api, run_id) not in FINAL, _flow_run(api, run_id)["state"]
        time.sleep(0.2)
    else:
        lock.release()
        raise AssertionError("the approved rollback was not done within 60 s")
    time.sleep(1.0)  # verifying now: the health check polls every 0.5 s and fails
    return run_id, incident_id, lock


def test_cancel_while_verifying_stops_the_process_at_once_and_the_timeline_says_so(pg_stack, world, store,
                                                                                  app_database_url):
    api = pg_stack.api
    run_id, incident_id, lock = _into_verification(api, world, store, app_database_url)
    try:
        pid = int(_flow_run(api, run_id)["infrastructure_pid"])
        assert _alive(pid)
        store.request_cancel(run_id, "nora", "taking over")  # as `runbooks cancel --by nora` records it first
        pressed = time.monotonic()
        result = http.post(f"{api}/flow_runs/{run_id}/set_state", timeout=5, json={
            "state": {"type": "CANCELLING", "name": "Cancelling", "message": "Cancelled by nora: taking over"}}).json()
        assert result["status"] == "ACCEPT"
        while _alive(pid) and time.monotonic() - pressed < 5:
            time.sleep(0.05)
        gone_after = time.monotonic() - pressed
        assert gone_after < CANCEL_GONE_SECONDS, f"the run's process was still there {gone_after:.1f} s after Cancel"
        assert _until(api, run_id, FINAL, timeout=10) == "CANCELLED"
        cancelled_after = time.monotonic() - pressed
        revision = world.cluster.get("deployments", "sandbox", "api")["metadata"]["annotations"][
            "deployment.kubernetes.io/revision"]
        time.sleep(2.0)  # nothing may act after the Cancel
    finally:
        lock.release()
    events = store.timeline(incident_id)
    cancelled = [e for e in events if e.kind == "cancelled"]
    assert len(cancelled) == 1, [e.kind for e in events]
    assert cancelled[0].actor == "nora"
    assert "taking over" in cancelled[0].message and "rollback (done" in cancelled[0].message
    assert [(e.kind, e.status) for e in store.action_log(incident_id)] == [("rollback", "done")]
    assert not [e for e in events if e.kind in ("recovered", "action_failed") or e.at > cancelled[0].at
                and e.kind in ("action", "escalated")]
    assert world.cluster.get("deployments", "sandbox", "api")["metadata"]["annotations"][
        "deployment.kubernetes.io/revision"] == revision
    assert len([r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]) == 1
    assert any("Runbook cancelled" in m["text"] for m in world.slack_messages)
    print(f"Cancel -> process gone {gone_after:.2f} s, run Cancelled {cancelled_after:.2f} s")


def test_a_run_whose_process_is_killed_is_crashed(pg_stack, world, store, app_database_url):
    api = pg_stack.api
    run_id, _, lock = _into_verification(api, world, store, app_database_url)
    try:
        os.kill(int(_flow_run(api, run_id)["infrastructure_pid"]), signal.SIGKILL)
        assert _until(api, run_id, FINAL, timeout=15) == "CRASHED"
    finally:
        lock.release()
    assert "SIGKILL" in (_flow_run(api, run_id)["state"]["message"] or "") or \
        "-9" in (_flow_run(api, run_id)["state"]["message"] or "")


def test_a_cancel_left_with_no_process_is_ended_by_the_worker_that_claimed_the_run(pg_stack, world):
    """A Cancelling run whose process is gone (its Cancel event lost, or it came as the process
    exited) is ended by its worker's sweep: on_cancellation hooks, then Cancelled."""
    api = pg_stack.api
    break_api(world)
    run_id = _run(api, {"service": "api", "environment": "sandbox", "dry_run": True})
    assert _until(api, run_id, FINAL, timeout=90) == "COMPLETED"
    assert (_flow_run(api, run_id).get("labels") or {}).get("prefect.worker.name", "").startswith("worker-")
    time.sleep(CANCEL_GRACE_SECONDS + 5)  # its process and the executor's hold on it are long gone
    forced = http.post(f"{api}/flow_runs/{run_id}/set_state", timeout=10, json={"force": True, "state": {
        "type": "CANCELLING", "name": "Cancelling", "message": "Cancelled by the sweep test"}})
    assert forced.status_code in (200, 201), forced.text
    started = time.monotonic()
    assert _until(api, run_id, FINAL, timeout=60) == "CANCELLED"
    assert 8 < time.monotonic() - started < 35  # after RUNBOOKS_CANCEL_STRANDED_SECONDS (10 s here), not at once
    assert _flow_run(api, run_id)["state"]["message"] == "Cancelled by the sweep test"


def test_an_error_in_prefects_cancellation_does_not_stop_the_worker(pg_stack):
    """Prefect runs each Cancel its observer hears of in the executor context's task group, whose
    host is the worker's main task; an error there (a read of the run timing out under load, or
    a run deleted meanwhile) cancelled the whole worker. The worker's contexts log it instead."""
    import anyio
    from prefect.runner._flow_run_executor import FlowRunExecutorContext
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.warm_worker import _contain_cancel_errors

    async def a_cancel_that_fails() -> int:
        ticks = 0
        async with FlowRunExecutorContext() as lane:
            _contain_cancel_errors(lane)
            lane._observer.on_cancelling(uuid4())  # a Cancelling run the API no longer knows
            for _ in range(10):  # the worker's main task goes on (cancelled here without the containment)
                await anyio.sleep(0.1)
                ticks += 1
        return ticks

    with temporary_settings(updates={PREFECT_API_URL: pg_stack.api}):
        assert anyio.run(a_cancel_that_fails) == 10


def _set_pool_paused(api: str, paused: bool) -> None:
    response = http.patch(f"{api}/work_pools/incident-response", json={"is_paused": paused}, timeout=5)
    assert response.status_code == 204, response.text


def test_a_paused_pool_gets_no_run_started(pg_stack, world):
    api = pg_stack.api
    _set_pool_paused(api, True)
    try:
        run_id = _run(api, {"service": "api", "environment": "sandbox", "dry_run": True})
        time.sleep(3.0)  # 30 polls of the warm worker
        assert _state(api, run_id) == "SCHEDULED"
    finally:
        _set_pool_paused(api, False)
    assert _until(api, run_id, FINAL, timeout=60) == "COMPLETED"


def _deployment_like(api: str, name: str, **fields) -> str:
    """A copy of service-down/sandbox under another name, with its own settings."""
    base = http.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    body = {key: base[key] for key in ("flow_id", "entrypoint", "path", "pull_steps", "work_pool_name",
                                       "work_queue_name", "parameter_openapi_schema", "enforce_parameter_schema")}
    body.update({"name": name, "parameters": {"service": "api", "environment": "sandbox"}, **fields})
    response = http.post(f"{api}/deployments/", json=body, timeout=5)
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def _run_of(api: str, deployment_id: str, params: dict) -> str:
    return http.post(f"{api}/deployments/{deployment_id}/create_flow_run", json={"parameters": params},
                     timeout=5).json()["id"]


def test_a_deployment_concurrency_limit_of_one_is_honoured(pg_stack, world):
    api = pg_stack.api
    deployment = _deployment_like(api, "limited-to-one", concurrency_limit=1)
    runs = [_run_of(api, deployment, {"service": "api", "environment": "sandbox", "dry_run": True}) for _ in range(2)]
    overlap, deadline = False, time.monotonic() + 90
    while time.monotonic() < deadline:
        states = [_state(api, r) for r in runs]
        overlap |= states.count("RUNNING") > 1
        if all(s in FINAL for s in states):
            break
        time.sleep(0.05)
    assert [_state(api, r) for r in runs] == ["COMPLETED", "COMPLETED"]
    assert not overlap, "both runs were Running at once"
    first, second = sorted((_flow_run(api, r) for r in runs), key=lambda r: r["start_time"])
    assert second["start_time"] >= first["end_time"]
    # put back for the slot (2 s a wait here), the waiting run is polled for every second, not
    # only every IDLE_POLL_SECONDS: it starts within a few seconds of the slot's release
    gap = (datetime.fromisoformat(second["start_time"]) - datetime.fromisoformat(first["end_time"])).total_seconds()
    print(f"the second run started {gap:.1f} s after the first ended")
    assert gap < 8, f"the run waiting for the slot started {gap:.1f} s after it was free"


def test_job_variables_env_reaches_the_run(pg_stack, world, test_config, tmp_path: Path):
    """Two deployments on one pool, each with its own RUNBOOKS_CONFIG: each run reads its own."""
    api = pg_stack.api
    raw = yaml.safe_load(Path(test_config).read_text())
    configs = {}
    for name in ("team-a", "team-b"):
        env = yaml.safe_load(yaml.safe_dump(raw["environments"]["sandbox"]))
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**raw, "environments": {name: env}}))
        configs[name] = _deployment_like(api, f"env-{name}", job_variables={"env": {"RUNBOOKS_CONFIG": str(path)}})
    own = {name: _run_of(api, dep, {"service": "api", "environment": name, "dry_run": True})
           for name, dep in configs.items()}
    crossed = _run_of(api, configs["team-a"], {"service": "api", "environment": "team-b", "dry_run": True})
    for run_id in own.values():
        assert _until(api, run_id, FINAL, timeout=60) == "COMPLETED", _flow_run(api, run_id)["state"]
    assert _until(api, crossed, FINAL, timeout=60) == "FAILED"
    assert "team-b" in (_flow_run(api, crossed)["state"]["message"] or "")


@pytest.mark.parametrize("outage_seconds", [10])
def test_the_worker_outlives_an_api_outage_while_a_run_dies(pg_stack, world, store, app_database_url,
                                                           outage_seconds):
    """The server is gone for 10 s and a run's process is killed meanwhile: the worker keeps
    serving, records the crash once the API is back, and takes the next run."""
    api = pg_stack.api
    run_id, _, lock = _into_verification(api, world, store, app_database_url)
    workers = [name for name in pg_stack.processes if name != "server"]
    try:
        pid = int(_flow_run(api, run_id)["infrastructure_pid"])
        pg_stack.kill("server")
        os.kill(pid, signal.SIGKILL)
        time.sleep(outage_seconds)
    finally:
        lock.release()
        pg_stack.start_server()
    for name in workers:
        assert pg_stack.processes[name].poll() is None, f"worker {name} exited during the outage"
    assert _until(api, run_id, FINAL, timeout=60) == "CRASHED"
    world.reset()
    after = _run(api, {"service": "api", "environment": "sandbox", "dry_run": True})
    assert _until(api, after, FINAL, timeout=30) == "COMPLETED"
