"""Failover: an outage replayed through the scale-out stack (`make up HA=1`) while its parts die.

The replay: bad releases of api and frontend, and 20 distinct incidents (alert `FailoverDrill`,
one per `cell` label, which config/sandbox.yaml correlates on), paced 0.4 s apart. Each alert is
sent by both replicas of an HA Prometheus pair a second apart and resent 4 s later, through
HAProxy, each delivery retried as Alertmanager retries (5xx or no answer: again, backing off).
A prober reads Prefect's API and the intake through the balancers every 0.1 s. The approvals
are pressed in Slack as they appear (and pressed again after 2 s if they did not land, as a
person would).

Phases (`--phases`, default all three):
  faults  kill -9 one API server at 1.5 s, one intake at 3.5 s and one worker at 5.5 s
  two     no faults, both API servers: the throughput
  one     no faults, the second API server stopped: the throughput with one

Then it checks, per phase: every alert made exactly one incident and one run (lost,
duplicates), every approval pressed landed once, every run ended or waits paused (none stuck
Running or Pending), no action ran twice (api's GitHub rollback runs against approved api
rollbacks), and prints the longest gap the prober saw and incidents to a verdict (the run's
plan waits for approval, or the run ended) per minute, with the seconds to a verdict (median,
p99). Killed parts are started again (`python -m devstack.stack up --ha`) after the phase.

    .venv/bin/python benchmarks/failover.py [--phases faults,two,one] [--cells 20] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devstack import ha  # noqa: E402 - after the path
from devstack.stack import INTAKE_URL, PREFECT_URL, RUN_DIR, SANDBOX_URL, stack_env  # noqa: E402
from sandbox.slack import ACTION_IDS  # noqa: E402

API = f"{PREFECT_URL}/api"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
FAULTS = [(1.5, "prefect-api-1"), (3.5, "intake-1"), (5.5, "worker-1")]
BROKEN = {"api": "v2-broken", "frontend": "v2-broken"}


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


@dataclass
class Cell:
    name: str
    service: str
    fingerprint: str
    starts: str
    first_sent: float = 0.0  # epoch seconds

    def alert(self, replica: str) -> dict[str, Any]:
        return {"status": "firing", "startsAt": self.starts, "fingerprint": self.fingerprint,
                "labels": {"alertname": "FailoverDrill", "service": self.service, "environment": "sandbox",
                           "severity": "P1", "cell": self.name, "replica": replica},
                "annotations": {"summary": f"{self.service} down in {self.name} (failover drill)"}}


@dataclass
class Report:
    phase: str
    cells: int
    alerts_lost: int = 0
    duplicate_runs: int = 0
    duplicate_incidents: int = 0
    stuck: int = 0
    final_states: dict[str, int] = field(default_factory=dict)
    pressed: int = 0
    landed: int = 0
    still_waiting: int = 0
    repeated_presses: int = 0
    api_rollbacks_run: int = 0
    api_rollbacks_approved: int = 0
    actions_twice: int = 0
    longest_gap_seconds: float = 0.0
    deliveries: int = 0
    delivery_retries: int = 0
    deliveries_failed: int = 0
    verdicts_per_minute: float = 0.0
    verdict_median_seconds: float = 0.0
    verdict_p99_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


class Prober(threading.Thread):
    """Reads Prefect's API and the intake through the balancers every 0.1 s; keeps the longest
    time either went without a good answer."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.longest = 0.0

    def run(self) -> None:
        last_ok = {url: time.monotonic() for url in (f"{API}/health", f"{INTAKE_URL}/healthz")}
        with httpx.Client(timeout=2) as client:
            while not self.stop.is_set():
                for url in last_ok:
                    try:
                        good = client.get(url).status_code == 200
                    except httpx.HTTPError:
                        good = False
                    now = time.monotonic()
                    if good:
                        self.longest = max(self.longest, now - last_ok[url] - 0.1)
                        last_ok[url] = now
                time.sleep(0.1)


class Presser(threading.Thread):
    """Presses Approve in Slack (as sam) on each approval message of the replay, and again after
    2 s if the message still offers it (the press met a dying intake)."""

    def __init__(self, since: float) -> None:
        super().__init__(daemon=True)
        self.stop, self.since = threading.Event(), since
        self.pressed: dict[str, float] = {}
        self.repeats = 0

    def run(self) -> None:
        with httpx.Client(base_url=SANDBOX_URL, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    messages = client.get("/_sandbox/slack/messages").json()
                except httpx.HTTPError:
                    messages = []
                for message in messages:
                    if message.get("received_at", 0) < self.since or not _offers_approve(message):
                        continue
                    ts, now = message["ts"], time.monotonic()
                    if ts in self.pressed and now - self.pressed[ts] < 2.0:
                        continue
                    if ts in self.pressed:
                        self.repeats += 1
                    self.pressed[ts] = now
                    try:
                        client.post("/_sandbox/slack/press", json={"user": "U0SANDSAM", "action": "approve", "ts": ts})
                    except httpx.HTTPError:
                        pass
                time.sleep(0.5)


def _offers_approve(message: dict) -> bool:
    return any(element.get("action_id") == ACTION_IDS["approve"]
               for block in message.get("blocks") or [] if block.get("type") == "actions"
               for element in block.get("elements") or [])


class Replay:
    def __init__(self, token: str, store_url: str):
        self.intake = httpx.Client(base_url=INTAKE_URL, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.api = httpx.Client(base_url=API, timeout=15)
        self.sandbox = httpx.Client(base_url=SANDBOX_URL, timeout=15)
        self.store_url = store_url
        self.lock = threading.Lock()
        self.retries = self.failed = self.deliveries = 0

    # -- the replay ---------------------------------------------------------------------------
    def deliver(self, cell: Cell, replica: str) -> None:
        """One Alertmanager delivery: retried on 5xx or no answer, backing off, for up to 60 s."""
        body = {"version": "4", "status": "firing", "groupKey": f"failover-{cell.name}", "receiver": "runbooks",
                "alerts": [cell.alert(replica)]}
        delay, deadline = 0.25, time.monotonic() + 60
        with self.lock:
            self.deliveries += 1
        while True:
            try:
                if self.intake.post("/alerts/alertmanager", json=body).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                with self.lock:
                    self.failed += 1
                return
            with self.lock:
                self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 4.0)

    def send_all(self, cells: list[Cell], faults: list[tuple[float, str]]) -> list[threading.Thread]:
        """Every delivery on its own thread at its moment (a slow answer does not hold back the
        next), the faults at theirs."""
        plan: list[tuple[float, Any]] = []
        for n, cell in enumerate(cells):
            at = n * 0.4
            plan += [(at, (cell, "a")), (at + 1.0, (cell, "b")), (at + 4.0, (cell, "a"))]
        plan += [(at, name) for at, name in faults]
        plan.sort(key=lambda item: item[0])
        t0, threads = time.monotonic(), []
        for at, what in plan:
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if isinstance(what, str):
                _kill(what)
                continue
            cell, replica = what
            if not cell.first_sent:
                cell.first_sent = time.time()
            thread = threading.Thread(target=self.deliver, args=(cell, replica), daemon=True)
            thread.start()
            threads.append(thread)
        return threads

    # -- what it made -------------------------------------------------------------------------
    def incidents(self, since: datetime) -> list[dict]:
        with psycopg.connect(self.store_url, connect_timeout=5) as conn:
            rows = conn.execute("""SELECT id, alert->'labels'->>'cell' AS cell, resolved_at FROM incidents
                                   WHERE alert->'labels'->>'alertname' = 'FailoverDrill' AND opened_at >= %s""",
                                (since,)).fetchall()
        return [{"id": r[0], "cell": r[1], "resolved_at": r[2]} for r in rows]

    def approvals(self, incident_ids: list[int]) -> list[tuple[int, str | None]]:
        with psycopg.connect(self.store_url, connect_timeout=5) as conn:
            return [(r[0], r[1]) for r in conn.execute(
                "SELECT incident_id, decision FROM approvals WHERE incident_id = ANY(%s)", (incident_ids,)).fetchall()]

    def approved_rollbacks(self, incident_ids: list[int], service: str) -> int:
        with psycopg.connect(self.store_url, connect_timeout=5) as conn:
            row = conn.execute("""SELECT count(*) FROM action_log l JOIN incidents i ON i.id = l.incident_id
                                  WHERE l.incident_id = ANY(%s) AND l.kind = 'rollback' AND l.status = 'done'
                                    AND i.service = %s""", (incident_ids, service)).fetchone()
        return int(row[0]) if row else 0

    def runs(self, since: datetime) -> list[dict]:
        body = {"flow_runs": {"expected_start_time": {"after_": _iso(since - timedelta(seconds=5))},
                              "tags": {"all_": ["alert"]}, "name": {"like_": "failoverdrill-"}}, "limit": 200}
        return [r for r in self.api.post("/flow_runs/filter", json=body).json()
                if r["created"] >= _iso(since - timedelta(seconds=1))[:-1]]

    def verdict_at(self, run_id: str) -> float | None:
        """When the run first waited for its approval or ended (epoch seconds)."""
        states = self.api.get("/flow_run_states/", params={"flow_run_id": run_id}).json()
        for state in sorted(states, key=lambda s: s["timestamp"]):
            if state["type"] in (*FINAL, "PAUSED"):
                return datetime.fromisoformat(state["timestamp"].replace("Z", "+00:00")).timestamp()
        return None

    def github_rollbacks(self, since: float, repo: str = "acme/api") -> int:
        from sandbox.world import GITHUB_TOKEN

        answer = self.sandbox.get(f"/github/repos/{repo}/actions/runs", params={"per_page": 100},
                                  headers={"Authorization": f"Bearer {GITHUB_TOKEN}"}).json()
        runs = answer.get("workflow_runs", []) if isinstance(answer, dict) else []
        return sum(1 for r in runs if r.get("name") == "rollback" and
                   datetime.fromisoformat(r["created_at"].replace("Z", "+00:00")).timestamp() >= since - 1)

    def settle(self, since: datetime, cells: int, timeout: float) -> list[dict]:
        """Until every run has ended or waits paused with its approval asked, or the time is up."""
        deadline, runs = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            runs = self.runs(since)
            if len(runs) >= cells and all(r["state_type"] in FINAL for r in runs):
                break
            time.sleep(1.0)
        return runs

    # -- before and after -----------------------------------------------------------------------
    def close_leftovers(self) -> None:
        """Earlier tries' open drill incidents and unfinished runs, so new alerts do not join them."""
        with psycopg.connect(self.store_url, connect_timeout=5, autocommit=True) as conn:
            conn.execute("""UPDATE incidents SET resolved_at = now(), status = 'Resolved',
                                   resolution = 'closed by the failover benchmark'
                            WHERE resolved_at IS NULL AND alert->'labels'->>'alertname' = 'FailoverDrill'""")
            conn.execute("DELETE FROM runbook_leases")
        body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED", "RUNNING", "PENDING", "SCHEDULED"]}},
                              "name": {"like_": "failoverdrill-"}}, "limit": 200}
        for run in self.api.post("/flow_runs/filter", json=body).json():
            self.api.post(f"/flow_runs/{run['id']}/set_state", json={"force": True, "state": {
                "type": "CANCELLED", "name": "Cancelled", "message": "Cancelled by the failover benchmark"}})

    def break_services(self) -> None:
        self.sandbox.post("/_sandbox/reset").raise_for_status()
        time.sleep(1)
        for service, version in BROKEN.items():
            self.sandbox.post("/_sandbox/deploy", json={"service": service, "version": version}).raise_for_status()
        time.sleep(3)  # the outage begins after the releases


def _kill(component: str) -> None:
    """kill -9 of the component's process alone: a worker's runs already started live on in
    their own processes (forked by its fork server), as they would on a machine whose worker
    process crashed."""
    pid = int((RUN_DIR / f"{component}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    print(f"    t={time.strftime('%H:%M:%S')} kill -9 {component} (pid {pid})", flush=True)


def _restart() -> None:
    done = subprocess.run([sys.executable, "-m", "devstack.stack", "up", "--ha"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"the stack did not come back:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def _cells(count: int, phase: str) -> list[Cell]:
    nonce = f"{phase}-{time.time_ns()}"
    starts = _iso(datetime.now(timezone.utc) - timedelta(seconds=2))
    return [Cell(f"{phase}-{n:02d}", ("api", "frontend")[n % 2],
                 hashlib.sha256(f"{nonce}-{n}".encode()).hexdigest()[:16], starts) for n in range(count)]


def run_phase(replay: Replay, phase: str, count: int, settle: float) -> Report:
    replay.close_leftovers()
    replay.retries = replay.failed = replay.deliveries = 0
    replay.break_services()
    since, since_epoch = datetime.now(timezone.utc), time.time()
    cells = _cells(count, phase)
    prober, presser = Prober(), Presser(since_epoch)
    prober.start()
    presser.start()
    faults = FAULTS if phase == "faults" else []
    print(f"  {phase}: {count} incidents, {3 * count} deliveries{', faults at 1.5/3.5/5.5 s' if faults else ''}",
          flush=True)
    threads = replay.send_all(cells, faults)
    for thread in threads:
        thread.join(90)
    runs = replay.settle(since, count, settle)
    presser.stop.set()
    prober.stop.set()
    prober.join(5)
    presser.join(5)
    report = _report(replay, phase, cells, runs, since, since_epoch)
    report.longest_gap_seconds = round(prober.longest, 2)
    report.pressed, report.repeated_presses = len(presser.pressed), presser.repeats
    replay.close_leftovers()
    return report


def _report(replay: Replay, phase: str, cells: list[Cell], runs: list[dict], since: datetime,
            since_epoch: float) -> Report:
    report = Report(phase, len(cells), deliveries=replay.deliveries, delivery_retries=replay.retries,
                    deliveries_failed=replay.failed)
    incidents = replay.incidents(since)
    by_cell: dict[str, int] = {}
    for incident in incidents:
        by_cell[incident["cell"]] = by_cell.get(incident["cell"], 0) + 1
    runs_by_cell: dict[str, list[dict]] = {}
    for run in runs:
        labels = ((run.get("parameters") or {}).get("alert") or {}).get("labels") or {}
        runs_by_cell.setdefault(labels.get("cell", "?"), []).append(run)
    verdicts: list[float] = []  # seconds from an alert's first delivery to its run's verdict
    verdict_times: list[float] = []
    for cell in cells:
        mine = runs_by_cell.get(cell.name, [])
        if not by_cell.get(cell.name) or not mine:
            report.alerts_lost += 1
            report.problems.append(f"{cell.name}: {by_cell.get(cell.name, 0)} incidents, {len(mine)} runs")
        report.duplicate_incidents += max(0, by_cell.get(cell.name, 0) - 1)
        report.duplicate_runs += max(0, len(mine) - 1)
        for run in mine:
            at = replay.verdict_at(run["id"])
            if at is not None:
                verdicts.append(at - cell.first_sent)
                verdict_times.append(at)
    for run in runs:
        report.final_states[run["state_type"]] = report.final_states.get(run["state_type"], 0) + 1
        if run["state_type"] in ("RUNNING", "PENDING"):
            report.stuck += 1
            report.problems.append(f"run {run['name']} ({run['id']}) stuck {run['state_type']}")
    ids = [i["id"] for i in incidents]
    approvals = replay.approvals(ids) if ids else []
    report.landed = sum(1 for _, decision in approvals if decision is not None)
    report.still_waiting = sum(1 for _, decision in approvals if decision is None)
    report.api_rollbacks_run = replay.github_rollbacks(since_epoch)
    report.api_rollbacks_approved = replay.approved_rollbacks(ids, "api") if ids else 0
    report.actions_twice = max(0, report.api_rollbacks_run - report.api_rollbacks_approved)
    if verdicts:
        span = max(verdict_times) - min(c.first_sent for c in cells if c.first_sent)
        report.verdicts_per_minute = round(len(verdicts) / max(span, 1e-9) * 60, 1)
        report.verdict_median_seconds = round(statistics.median(verdicts), 1)
        report.verdict_p99_seconds = round(_percentile(verdicts, 0.99), 1)
    return report


def _print(report: Report) -> None:
    goal = ("0 lost, 0 duplicate, 0 stuck, every press landed, 0 twice, gap < 5 s")
    print(f"\n  {report.phase}: {report.cells} incidents   (goal: {goal})")
    print(f"    alerts lost {report.alerts_lost}; duplicate runs {report.duplicate_runs}, duplicate incidents "
          f"{report.duplicate_incidents}; stuck Running/Pending {report.stuck}; final states {report.final_states}")
    print(f"    approvals pressed {report.pressed} -> landed {report.landed}, still waiting {report.still_waiting} "
          f"(pressed again {report.repeated_presses})")
    print(f"    api rollbacks run {report.api_rollbacks_run} for {report.api_rollbacks_approved} approved: "
          f"twice {report.actions_twice}")
    print(f"    longest gap through the balancers {report.longest_gap_seconds:.2f} s; deliveries "
          f"{report.deliveries}, retried {report.delivery_retries}, failed for good {report.deliveries_failed}")
    print(f"    incidents to a verdict per minute {report.verdicts_per_minute}; seconds to a verdict median "
          f"{report.verdict_median_seconds} / p99 {report.verdict_p99_seconds}")
    for problem in report.problems:
        print(f"    ! {problem}")


def met(report: Report) -> bool:
    return (report.alerts_lost == 0 and report.duplicate_runs == 0 and report.duplicate_incidents == 0
            and report.stuck == 0 and report.still_waiting == 0 and report.actions_twice == 0
            and report.longest_gap_seconds < 5.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phases", default="faults,two,one")
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--settle", type=float, default=240.0, help="seconds to wait for the runs to end")
    parser.add_argument("--json", action="store_true", help="also print the reports as one JSON line at the end")
    args = parser.parse_args()
    env = stack_env()
    token = env["RUNBOOKS_ALERT_TOKEN"]
    store_url = os.environ.get("RUNBOOKS_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/runbooks"
    for name in ("prefect-api-1", "prefect-api-2", "intake-1", "intake-2", "worker-1", "worker-2", "haproxy"):
        if not (RUN_DIR / f"{name}.pid").exists():
            print(f"{name} is not running: start the scale-out stack with `make up HA=1` first", file=sys.stderr)
            return 2
    replay = Replay(token, store_url)
    reports = []
    print(f"Failover benchmark through HAProxy ({API}, {INTAKE_URL}); API servers {ha.API_PORTS}", flush=True)
    for phase in args.phases.split(","):
        if phase == "one":
            os.killpg(int((RUN_DIR / "prefect-api-2.pid").read_text()), signal.SIGTERM)
            time.sleep(8)  # HAProxy takes it out after its failed checks; the rest go to the first
        reports.append(run_phase(replay, phase, args.cells, args.settle))
        _print(reports[-1])
        if phase in ("faults", "one"):
            _restart()
            print("    the stack is whole again (killed parts started)", flush=True)
    if args.json:
        print(json.dumps([asdict(r) for r in reports]))
    return 0 if all(met(r) for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
