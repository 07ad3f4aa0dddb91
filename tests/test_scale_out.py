"""The production shape in small: a Prefect server whose own database is PostgreSQL, two
process workers on one pool, and the service-down runbook end to end through them; every run
is executed exactly once."""

from __future__ import annotations

import time

from integrations import http
from tests.conftest import BROKEN_IMAGE, api_image, break_api


def _run(api: str, params: dict) -> str:
    dep = http.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    return http.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": params}, timeout=5).json()[
        "id"
    ]


# the polls' reads wait as long as test_ui's: a read the loaded test server took 5 s to answer
# failed a test about something else (seen in CI, three lanes on two cores)
def _state(api: str, run_id: str) -> str:
    return http.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"]["type"]


def _state_name(api: str, run_id: str) -> str:
    return http.get(f"{api}/flow_runs/{run_id}", timeout=30).json()["state"]["name"]


def _until(api: str, run_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(api, run_id)
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {state} after {timeout} s")


def test_service_down_end_to_end_on_a_postgres_backed_server_with_two_workers(pg_stack, world):
    api, logs = pg_stack.api, pg_stack.logs
    break_api(world)
    assert api_image(world) == BROKEN_IMAGE
    run_id = _run(api, {"service": "api", "environment": "sandbox"})
    assert _until(api, run_id, ("PAUSED", "FAILED", "CRASHED")) == "PAUSED"
    assert _state_name(api, run_id) == "Suspended"  # its process has exited while it waits
    answer = http.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "quinn", "reason": "scale-out test"}}).json()
    assert answer["status"] == "ACCEPT"
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    assert api_image(world).endswith(":v1.5.0")
    assert http.get(f"{world.url}/services/api/__ok").status_code == 200

    # several runs at once: each is executed by exactly one of the two workers, once. Both
    # workers may try to claim the same run; the server lets one move it to Pending and sends
    # the other an abort, which that worker logs ("Aborted submission ...") and skips. The
    # approved run was executed twice on purpose: once until it suspended, once after approval.
    runs = [_run(api, {"service": "api", "environment": "sandbox", "dry_run": True}) for _ in range(4)]
    for rid in runs:
        assert _until(api, rid, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    worker_logs = {name: (logs / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}
    for rid in [run_id, *runs]:
        executions = {
            name: text.count(f"submitting flow run '{rid}'") - text.count(f"Aborted submission of flow run '{rid}'")
            for name, text in worker_logs.items()
        }
        assert sum(executions.values()) == (2 if rid == run_id else 1), f"run {rid} executions: {executions}"
        run = http.post(f"{api}/flow_runs/filter", json={"flow_runs": {"id": {"any_": [rid]}}}, timeout=5).json()[0]
        assert run["state"]["type"] == "COMPLETED"
    rollbacks = [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]
    assert len(rollbacks) == 1


def test_a_pending_approval_survives_killing_the_workers_and_the_server(pg_stack, world, store):
    """Kill every worker and the Prefect server (SIGKILL) while a run waits for approval,
    start them again, approve: the run finishes and the sandbox changed exactly once."""
    api = pg_stack.api
    break_api(world)
    run_id = _run(api, {"service": "api", "environment": "sandbox"})
    assert _until(api, run_id, ("PAUSED", "FAILED", "CRASHED")) == "PAUSED"
    assert _state_name(api, run_id) == "Suspended"
    incident = store.get(store.approval_for_run(run_id).incident_id)
    notices_before = [m["text"] for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED")]

    for name in ("worker-a", "worker-b", "server"):
        pg_stack.kill(name)
    pg_stack.start_server()
    pg_stack.start_workers("worker-c")
    assert _state_name(api, run_id) == "Suspended"  # still answerable after the restart

    answer = http.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "rita", "reason": "after the crash"}}).json()
    assert answer["status"] == "ACCEPT", answer
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED"), timeout=150) == "COMPLETED"
    assert "submitting flow run" in (pg_stack.logs / "worker-c.log").read_text()  # the new worker finished it

    assert api_image(world).endswith(":v1.5.0")
    assert http.get(f"{world.url}/services/api/__ok").status_code == 200
    rollbacks = [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]
    assert len(rollbacks) == 1, rollbacks  # the destructive step ran exactly once
    log = store.action_log(incident.id)
    assert [(e.kind, e.status, e.attempts) for e in log] == [("rollback", "done", 1)]
    events = [e.kind for e in store.timeline(incident.id)]
    assert events.count("action") == 1 and events.count("approval_requested") == 1 and "resumed" in events
    assert events.count("detected") == 1 and events.count("diagnosed") == 1  # not opened or diagnosed again
    notices_after = [m["text"] for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED")]
    assert notices_after == notices_before  # not announced twice
    assert store.get(incident.id).status.value == "Resolved"
    assert store.approvals(incident.id)[0].approver == "rita (unverified)"


def test_a_run_a_dead_worker_claimed_and_never_started_is_run_by_a_live_one(pg_stack, world):
    """A worker killed between claiming a run (Pending) and starting it: Prefect 3.9 labels a
    Pending run with no worker, so nothing else would ever run it. The pool's sweeper (its first
    live worker) puts it back to Scheduled after RUNBOOKS_PENDING_STRANDED_SECONDS (20 on this
    stack), once, and a live worker runs it. Staged exactly: the run is created Pending, as the
    dead worker's claim left it, and that worker is then killed. The doomed worker beats every
    2 s, so it is taken for dead 6 s after its last beat (3 missed), well before the threshold.
    A run a live worker claimed is never taken: one created Pending after the death stays Pending."""
    api = pg_stack.api
    dep = http.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()

    def pending_run() -> str:
        return http.post(f"{api}/deployments/{dep['id']}/create_flow_run", timeout=5, json={
            "parameters": {"service": "api", "environment": "sandbox", "dry_run": True},
            "state": {"type": "PENDING", "name": "Pending"}}).json()["id"]

    pg_stack.start_workers("worker-doomed", PREFECT_WORKER_HEARTBEAT_SECONDS="2")
    run_id = pending_run()
    created = time.monotonic()
    time.sleep(1)
    pg_stack.kill("worker-doomed")
    time.sleep(9)  # three missed heartbeats (2 s each) and a margin: the worker is dead
    started = time.monotonic()
    after_death = pending_run()  # as a live worker's slow-to-start claim looks
    time.sleep(3)
    assert time.monotonic() - created < 18, "the check below came too late to mean anything"
    assert _state(api, run_id) == "PENDING"  # not before its time: a live worker may still be starting it
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED"), timeout=60) == "COMPLETED"
    states = http.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id}, timeout=5).json()
    put_back = [s for s in states if s["type"] == "SCHEDULED" and "Rescheduled by worker" in (s["message"] or "")]
    assert len(put_back) == 1, [(s["type"], s["message"]) for s in states]
    logs = "".join((pg_stack.logs / f"{name}.log").read_text() for name in pg_stack.workers())
    assert f"({run_id}) was left Pending by a worker that stopped: rescheduled" in logs
    time.sleep(max(0.0, started + 30 - time.monotonic()))  # the later run is Pending 30 s now, past its 20 s
    assert _state(api, after_death) == "PENDING"  # and it was claimed after the death: it is left alone
    http.post(f"{api}/flow_runs/{after_death}/set_state", timeout=5, json={
        "force": True, "state": {"type": "CANCELLED", "name": "Cancelled", "message": "test done"}})
