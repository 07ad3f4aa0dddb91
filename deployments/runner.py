"""A warm runner for the work pool: it has Prefect and every flow imported already, polls
for scheduled runs every `--poll` seconds (0.1 by default), claims one by proposing Pending (the server
refuses a second claim, so it can share the pool with a standard worker), and forks a child
that runs it through Prefect's own engine entry (load_flow_run, load_flow, run_flow).

Why: a process worker polls every 10 s by default and starts each run in a new Python
process that spends ~3 s importing Prefect, so an alert waits ~10 s for its first
diagnosis step. Forking a process that has imported everything removes the import, and a
short poll removes most of the wait. The standard worker stays on the pool as a fallback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from datetime import datetime, timedelta, timezone

import httpx

from deployments.prefect_api import auth_headers

log = logging.getLogger("runbooks.runner")


def _prewarm() -> None:
    """Import what a run needs, in the parent, before any fork (no threads are started)."""
    import prefect.flow_engine  # noqa: F401
    import flows.database_issues  # noqa: F401
    import flows.high_error_rate  # noqa: F401
    import flows.security_incident  # noqa: F401
    import flows.service_down  # noqa: F401


def _execute(flow_run_id: str) -> None:
    """In the child: exactly what `python -m prefect.engine <id>` does after its imports."""
    from prefect.flow_engine import load_flow, load_flow_run, run_flow

    from prefect.exceptions import Pause

    os.environ["PREFECT__FLOW_RUN_ID"] = flow_run_id
    flow_run = load_flow_run(flow_run_id=flow_run_id)
    flow = load_flow(flow_run)
    try:
        run_flow(flow, flow_run=flow_run)
    except Pause:  # suspended (waiting for approval): the process ends; resuming reschedules the run
        log.info("flow run %s suspended", flow_run_id)


class Runner:
    def __init__(self, api_url: str, pool: str, name: str, poll: float, max_runs: int):
        self.http = httpx.Client(base_url=api_url.rstrip("/"), timeout=httpx.Timeout(5.0, connect=2.0),
                                 headers=auth_headers())
        self.pool, self.name, self.poll, self.max_runs = pool, name, poll, max_runs
        self.children: dict[int, str] = {}
        self.stopping = False
        self.last_heartbeat = 0.0

    def heartbeat(self) -> None:
        if time.monotonic() - self.last_heartbeat < 15:
            return
        self.http.post(f"/work_pools/{self.pool}/workers/heartbeat",
                       json={"name": self.name, "heartbeat_interval_seconds": 30})
        self.last_heartbeat = time.monotonic()

    def scheduled(self) -> list[dict]:
        """Due runs of the pool, by a read-only query: the worker endpoint for this writes on
        every call, which at a sub-second poll locks a SQLite-backed server for everyone else."""
        before = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
        response = self.http.post("/flow_runs/filter", json={
            "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}},
                          "next_scheduled_start_time": {"before_": before}},
            "work_pools": {"name": {"any_": [self.pool]}},
            "sort": "NEXT_SCHEDULED_START_TIME_ASC", "limit": 10})
        response.raise_for_status()
        return response.json()

    def claim(self, run_id: str) -> bool:
        response = self.http.post(f"/flow_runs/{run_id}/set_state",
                                  json={"state": {"type": "PENDING", "name": "Pending",
                                                  "message": f"claimed by {self.name}"}})
        return response.status_code < 300 and response.json().get("status") == "ACCEPT"

    def start(self, run_id: str) -> None:
        pid = os.fork()
        if pid == 0:  # the child: run it, then leave without running the parent's cleanup
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _execute(run_id)
            except BaseException:  # noqa: BLE001 - the engine has recorded the run's state
                logging.getLogger("runbooks.runner").exception("flow run %s ended with an error", run_id)
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        self.children[pid] = run_id
        log.info("started flow run %s in pid %d", run_id, pid)

    def reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                run_id = self.children.pop(pid)
                code = os.waitstatus_to_exitcode(status) if status else 0
                if code != 0:
                    self.crashed(run_id, code)

    def crashed(self, run_id: str, code: int) -> None:
        """A child that failed before the engine recorded an end (e.g. the flow's module did
        not import) leaves its run Pending or Running: mark it Crashed, or it would hold the
        deployment's concurrency slot for ever."""
        state = self.http.get(f"/flow_runs/{run_id}").json().get("state", {}).get("type")
        if state in ("PENDING", "RUNNING"):
            self.http.post(f"/flow_runs/{run_id}/set_state", json={"state": {
                "type": "CRASHED", "name": "Crashed", "message": f"the run's process exited with code {code}"}})
            log.error("flow run %s crashed (exit code %d)", run_id, code)

    def loop(self) -> None:
        log.info("warm runner %s polling pool %s every %.2f s", self.name, self.pool, self.poll)
        while not self.stopping:
            self.reap()
            try:
                self.heartbeat()
                if len(self.children) < self.max_runs:
                    for run in self.scheduled():
                        if len(self.children) >= self.max_runs or self.stopping:
                            break
                        if self.claim(run["id"]):
                            self.start(run["id"])
            except httpx.HTTPError as exc:
                log.warning("Prefect API: %s", exc)
                time.sleep(min(5.0, self.poll * 10))
            time.sleep(self.poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deployments.runner", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default="incident-response")
    parser.add_argument("--name", default="runbooks-warm-runner")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between polls (a read-only query)")
    parser.add_argument("--max-runs", type=int, default=20, help="runs at once (each is a process)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    _prewarm()
    runner = Runner(os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"), args.pool, args.name, args.poll,
                    args.max_runs)

    def stop(*_: object) -> None:
        runner.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    runner.loop()
    log.info("stopped polling (%d runs were still going)", len(runner.children))


if __name__ == "__main__":
    main()
