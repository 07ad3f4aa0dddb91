"""A production-shaped Prefect stack for the tests that need one: a server whose own database is
PostgreSQL, the pool, every deployment of prefect.yaml, and named warm workers (the worker type
`make up` starts, polling as often), each a process group that can be killed and started again.
One per session (tests/conftest.py's `pg_stack`): the scale-out tests and the browser tests share it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg

from devstack.stack import SERVER_DATABASE_POOL, SERVER_TASK_RUN_RECORDER
from integrations import http
from tests.conftest import ADMIN_URL, free_port, in_lane

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SCRATCH_DB = in_lane("runbooks_prefect_scratch")
POOL = "incident-response"  # prefect.yaml's pool, on this stack's own server
WORKER_TYPE = "runbooks-warm"  # deployments/warm_worker.py, as under `make up`
WORKERS = ("worker-a", "worker-b")  # the stack's own two; a test may start more and must stop them
IN_FLIGHT = ["SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING"]


def _wait(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if http.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout} s")


class Stack:
    """A Prefect server on PostgreSQL, the pool, every deployment, and named warm workers,
    each a process group that can be killed and started again."""

    def __init__(self, home: Path, logs: Path, port: int):
        self.api, self.logs, self.port = f"http://127.0.0.1:{port}/api", logs, port
        self.env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": self.api,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL": ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://")
                    .rsplit("/", 1)[0] + f"/{SCRATCH_DB}", "PREFECT_WORKER_QUERY_SECONDS": "0.05",
                    "PREFECT_LOGGING_LEVEL": "INFO",
                    "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "2",  # as under `make up`
                    "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",  # no incident-watch runs mid-test
                    # a Cancel left with no process is ended after 10 s here (60 s by default)
                    "RUNBOOKS_CANCEL_STRANDED_SECONDS": "10",
                    # a run left Pending by a dead worker is put back after 20 s here (30 s by default)
                    "RUNBOOKS_PENDING_STRANDED_SECONDS": "20",
                    "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",  # as under `make up`
                    "RUNBOOKS_WORKER_METRICS_HOST": "127.0.0.1",
                    **SERVER_DATABASE_POOL, **SERVER_TASK_RUN_RECORDER}
        self.processes: dict[str, subprocess.Popen] = {}
        self.metrics_ports: dict[str, int] = {}  # each worker's /metrics

    def _spawn(self, name: str, args: list[str], **env: str) -> None:
        log = (self.logs / f"{name}.log").open("a")
        self.processes[name] = subprocess.Popen([str(BIN / "prefect"), *args], cwd=ROOT, env={**self.env, **env},
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_server(self) -> None:
        self._spawn("server", ["server", "start", "--host", "127.0.0.1", "--port", str(self.port)])
        _wait(f"{self.api}/health", 120)

    def start_workers(self, *names: str, **env: str) -> None:
        """Start the workers side by side (with `env` over the stack's) and wait until each is online."""
        for name in names:
            self.metrics_ports[name] = free_port()
            self._spawn(name, ["worker", "start", "--pool", POOL, "--type", WORKER_TYPE, "--name", name],
                        RUNBOOKS_WORKER_METRICS_PORT=str(self.metrics_ports[name]), **env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = http.post(f"{self.api}/work_pools/{POOL}/workers/filter", json={}, timeout=5).json()
            online = {w["name"] for w in workers if w.get("status") == "ONLINE"}
            if online >= set(names):
                return
            time.sleep(0.5)
        raise AssertionError(f"workers {sorted(set(names) - online)} did not come online")

    def workers(self) -> list[str]:
        """The workers running now."""
        return [name for name in self.processes if name in self.metrics_ports]

    def kill(self, name: str, sig: int = 9) -> None:
        self.metrics_ports.pop(name, None)
        process = self.processes.pop(name)
        try:
            os.killpg(process.pid, sig)
            process.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, 9)

    def settle(self, timeout: float = 180) -> list[str]:
        """The stack as the next test expects it: its server and both workers up, and no run
        left in flight by the test before (each is cancelled, as an operator would, and waited
        for). One failed test then fails alone instead of leaving 50 runs to slow the next.
        Returns what had to be put right, for the test's output."""
        done: list[str] = []
        if "server" not in self.processes or self.processes["server"].poll() is not None:
            self.processes.pop("server", None)
            self.start_server()
            done.append("started the server again")
        down = [name for name in WORKERS if name not in self.processes or self.processes[name].poll() is not None]
        if down:
            for name in down:
                self.processes.pop(name, None)
            self.start_workers(*down)
            done.append(f"started {down} again")
        # Rounds: a run may start another while the first are cancelled (a resolved incident's
        # post-incident run, which suspends until its form is answered).
        cancelled: set[str] = set()
        deadline = time.monotonic() + timeout
        while (left := self._in_flight()) and time.monotonic() < deadline:
            for run in left:
                if run["id"] not in cancelled and run["state"]["type"] != "CANCELLING":
                    http.post(f"{self.api}/flow_runs/{run['id']}/set_state", timeout=30, json={
                        "force": True, "state": {"type": "CANCELLING", "name": "Cancelling",
                                                 "message": "left in flight by the test before"}})
                    cancelled.add(run["id"])
            time.sleep(0.5)
        if cancelled:
            done.append(f"cancelled {len(cancelled)} runs left in flight")
        stuck = [f"{run['name']} ({run['state']['type']})" for run in self._in_flight()]
        assert not stuck, f"runs still in flight {timeout:.0f} s after their Cancel: {stuck}"
        return done

    def _in_flight(self) -> list[dict]:
        return http.post(f"{self.api}/flow_runs/filter", timeout=30, json={
            "flow_runs": {"state": {"type": {"any_": IN_FLIGHT}}}, "limit": 200}).json()

    def stop(self) -> None:
        """Interrupt every process at once and wait for them together (one by one, the stack
        took ~20 s to stop); one still there after 20 s is killed."""
        processes, self.processes = self.processes, {}
        self.metrics_ports.clear()
        for process in processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        for process in processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)


def running_stack(tmp_path_factory):
    """Server on PostgreSQL + pool + deployments + two workers, on free ports, stopped after."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {SCRATCH_DB}")
    stack = Stack(tmp_path_factory.mktemp("prefect-home"), tmp_path_factory.mktemp("logs"), free_port())
    try:
        stack.start_server()
        for cmd in (["work-pool", "create", POOL, "--type", WORKER_TYPE],
                    ["--no-prompt", "deploy", "--all"]):
            done = subprocess.run([str(BIN / "prefect"), *cmd], cwd=ROOT, env=stack.env, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
        stack.start_workers(*WORKERS)
        yield stack
    finally:
        stack.stop()
