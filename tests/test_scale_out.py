"""The production shape in small: a Prefect server whose own database is PostgreSQL, two
process workers on one pool, and the service-down runbook end to end through them; every run
is executed exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ADMIN_URL, BROKEN_IMAGE, api_image, break_api, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRATCH_DB = "runbooks_prefect_scratch"
POOL = "incident-response"  # prefect.yaml's pool, on this test's own server


def _wait(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class Stack:
    """A Prefect server on PostgreSQL, the pool, every deployment, and named process workers,
    each a process group that can be killed and started again."""

    def __init__(self, home: Path, logs: Path, port: int):
        self.api, self.logs, self.port = f"http://127.0.0.1:{port}/api", logs, port
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL": ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://")
                    .rsplit("/", 1)[0] + f"/{SCRATCH_DB}", "PREFECT_WORKER_QUERY_SECONDS": "1",
                    "PREFECT_LOGGING_LEVEL": "INFO",
                    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}  # no incident-watch runs mid-test
        self.processes: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.logs / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen([str(BIN / "prefect"), *args], cwd=ROOT, env=self.env, stdout=log,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def start_server(self) -> None:
        self._spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)])
        _wait(f"{self.api}/health", 120)

    def start_worker(self, name: str) -> None:
        self._spawn(name, ["worker", "start", "--pool", POOL, "--type", "process", "--name", name])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = httpx.post(f"{self.api}/work_pools/{POOL}/workers/filter", json={}, timeout=5).json()
            if any(w["name"] == name and w.get("status") == "ONLINE" for w in workers):
                return
            time.sleep(0.5)
        raise AssertionError(f"worker {name} did not come online")

    def kill(self, name: str, sig: int = 9) -> None:
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, sig)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, 9)

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self.kill(name, 2)


@pytest.fixture(scope="module")
def pg_stack(sandbox, test_config, tmp_path_factory):
    """Server on PostgreSQL + pool + deployment + two workers, on free ports, torn down after."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH_DB}")
    stack = Stack(tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs"), free_port())
    try:
        stack.start_server()
        for cmd in (["work-pool", "create", POOL, "--type", "process"],
                    ["--no-prompt", "deploy", "--all"]):
            done = subprocess.run([str(BIN / "prefect"), *cmd], cwd=ROOT, env=stack.env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        for name in ("worker-a", "worker-b"):
            stack.start_worker(name)
        yield stack
    finally:
        stack.stop()


def _run(api: str, params: dict) -> str:
    dep = httpx.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    return httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": params}, timeout=5).json()["id"]


def _state(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]


def _state_name(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["name"]


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
    answer = httpx.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "quinn", "reason": "scale-out test"}}).json()
    assert answer["status"] == "ACCEPT"
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    assert api_image(world).endswith(":v1.5.0")
    assert httpx.get(f"{world.url}/services/api/__ok").status_code == 200

    # several runs at once: each is executed by exactly one of the two workers, once. Both
    # workers may try to claim the same run; the server lets one move it to Pending and sends
    # the other an abort, which that worker logs ("Aborted submission ...") and skips. The
    # approved run was executed twice on purpose: once until it suspended, once after approval.
    runs = [_run(api, {"service": "api", "environment": "sandbox", "dry_run": True}) for _ in range(4)]
    for rid in runs:
        assert _until(api, rid, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    worker_logs = {name: (logs / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}
    for rid in [run_id, *runs]:
        executions = {name: text.count(f"submitting flow run '{rid}'") - text.count(f"Aborted submission of flow run '{rid}'")
                      for name, text in worker_logs.items()}
        assert sum(executions.values()) == (2 if rid == run_id else 1), f"run {rid} executions: {executions}"
        run = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"id": {"any_": [rid]}}}, timeout=5).json()[0]
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
    incident = store.get(store.approval_for_run(run_id)["incident_id"])
    notices_before = [m["text"] for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED")]

    for name in ("worker-a", "worker-b", "server"):
        pg_stack.kill(name)
    pg_stack.start_server()
    pg_stack.start_worker("worker-c")
    assert _state_name(api, run_id) == "Suspended"  # still answerable after the restart

    answer = httpx.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "rita", "reason": "after the crash"}}).json()
    assert answer["status"] == "ACCEPT", answer
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED"), timeout=150) == "COMPLETED"
    assert "submitting flow run" in (pg_stack.logs / "worker-c.log").read_text()  # the new worker finished it

    assert api_image(world).endswith(":v1.5.0")
    assert httpx.get(f"{world.url}/services/api/__ok").status_code == 200
    rollbacks = [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]
    assert len(rollbacks) == 1, rollbacks  # the destructive step ran exactly once
    log = store.action_log(incident.id)
    assert [(e["kind"], e["status"], e["attempts"]) for e in log] == [("rollback", "done", 1)]
    events = [e.kind for e in store.timeline(incident.id)]
    assert events.count("action") == 1 and events.count("approval_requested") == 1 and "resumed" in events
    assert events.count("detected") == 1 and events.count("diagnosed") == 1  # not opened or diagnosed again
    notices_after = [m["text"] for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED")]
    assert notices_after == notices_before  # not announced twice
    assert store.get(incident.id).status.value == "Resolved"
    assert store.approvals(incident.id)[0]["approver"] == "rita"
