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


@pytest.fixture(scope="module")
def pg_stack(sandbox, test_config, tmp_path_factory):
    """Server on PostgreSQL + pool + deployment + two workers, on free ports, torn down after."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH_DB}")
    home, port = tmp_path_factory.mktemp("prefect-home"), free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://")
           .rsplit("/", 1)[0] + f"/{SCRATCH_DB}", "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "INFO",
           "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}  # no incident-watch runs mid-test
    logs = tmp_path_factory.mktemp("logs")
    processes = [subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=(logs / "server.log").open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)]
    try:
        _wait(f"{api}/health", 120)
        for cmd in (["work-pool", "create", POOL, "--type", "process"],
                    ["--no-prompt", "deploy", "--all"]):
            done = subprocess.run([str(BIN / "prefect"), *cmd], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        for name in ("worker-a", "worker-b"):
            processes.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", name],
                cwd=ROOT, env=env, stdout=(logs / f"{name}.log").open("w"), stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}, timeout=5).json()
            if {w["name"] for w in workers if w.get("status") == "ONLINE"} >= {"worker-a", "worker-b"}:
                break
            time.sleep(1)
        else:
            raise AssertionError("the two workers did not come online")
        yield api, logs
    finally:
        for process in reversed(processes):
            try:
                os.killpg(process.pid, 2)
                process.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, 9)


def _run(api: str, params: dict) -> str:
    dep = httpx.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    return httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={"parameters": params}, timeout=5).json()["id"]


def _state(api: str, run_id: str) -> str:
    return httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]


def _until(api: str, run_id: str, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _state(api, run_id)
        if state in states:
            return state
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {state} after {timeout} s")


def test_service_down_end_to_end_on_a_postgres_backed_server_with_two_workers(pg_stack, world):
    api, logs = pg_stack
    break_api(world)
    assert api_image(world) == BROKEN_IMAGE
    run_id = _run(api, {"service": "api", "environment": "sandbox"})
    assert _until(api, run_id, ("PAUSED", "FAILED", "CRASHED")) == "PAUSED"
    answer = httpx.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "quinn", "reason": "scale-out test"}}).json()
    assert answer["status"] == "ACCEPT"
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    assert api_image(world).endswith(":v1.5.0")
    assert httpx.get(f"{world.url}/services/api/__ok").status_code == 200

    # several runs at once: each is executed by exactly one of the two workers, once. Both
    # workers may try to claim the same run; the server lets one move it to Pending and sends
    # the other an abort, which that worker logs ("Aborted submission ...") and skips.
    runs = [_run(api, {"service": "api", "environment": "sandbox", "dry_run": True}) for _ in range(4)]
    for rid in runs:
        assert _until(api, rid, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    worker_logs = {name: (logs / f"{name}.log").read_text() for name in ("worker-a", "worker-b")}
    for rid in [run_id, *runs]:
        takers = [name for name, text in worker_logs.items()
                  if text.count(f"submitting flow run '{rid}'") > text.count(f"Aborted submission of flow run '{rid}'")]
        assert len(takers) == 1, f"run {rid} was executed by {takers}"
        assert sum(text.count(f"submitting flow run '{rid}'") for text in worker_logs.values()) <= 2
        run = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"id": {"any_": [rid]}}}, timeout=5).json()[0]
        # entered Running once; the approved run a second time, when it was resumed after its pause
        assert run["run_count"] == (2 if rid == run_id else 1), run
