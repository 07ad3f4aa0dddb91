"""Engine latency through the running `make up` stack (Prefect server on PostgreSQL, the warm
worker, the intake, the sandbox). Each part prints median, p99 and the Prefect API 5xx seen.

1. alert -> first diagnosis step: alerts for the healthy api, one every --gap seconds; from
   the POST to the intake to the `probe-endpoints` task running. Targets p50 <= 0.5 s,
   p99 <= 1.5 s.
2. A bad deploy of api, --cycles times: alert -> the approval request posted in Slack (plan
   ready; target p50 <= 3 s), then, 3 s later (a person reads the plan), approve (Resume) ->
   the rollback action started (its claim in the incident store; target p50 <= 0.5 s); the
   runbook rolls back and resolves.
3. Many incidents at once: services svc-001.. added to the sandbox, each broken by a bad
   deploy; a generated config with those services, a `service-down/sandbox-load` deployment
   that reads it (job_variables.env), and 1, 10, 50 runs started at once through the API.
   Every run must reach its approval request (none lost, stuck or failed); prints
   time-to-plan p50/p99 for each size. The waiting runs are cancelled and their incidents
   resolved afterwards.

4. Many services (`--parts 4`, --services 50): the same services, a second intake whose config
   is the generated one (so each alert is routed, deduplicated and correlated as any other),
   and one Alertmanager alert per service, all posted at once. Prints time-to-plan (alert POST
   -> approval request posted) p50/p99, how many reached their plan, and the CPU-seconds the
   round cost per run, from /proc (benchmarks/proc_cpu.py): the Prefect server, the worker with
   its fork server and every run it forked, the second intake, PostgreSQL, and the whole
   machine, less what the same parts spend idle over as long. With --services 1 it is the cost
   of one service-down run to its approval.

5xx are counted on every answer the benchmark gets from the Prefect API and the intake, and
in what the worker and the intake logged while it ran (.run/*.log).

    .venv/bin/python benchmarks/engine_latency.py [--alerts 20] [--cycles 8] [--sizes 1,10,50]
    .venv/bin/python benchmarks/engine_latency.py --parts 4 --services 50
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
import yaml

from integrations import http

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.proc_cpu import Parts, session_of  # noqa: E402

API, INTAKE, SANDBOX = "http://127.0.0.1:4200/api", "http://127.0.0.1:8787", "http://127.0.0.1:8790"
RUN_DIR = Path(os.environ.get("RUNBOOKS_RUN_DIR", ROOT / ".run"))  # where `make up` keeps its logs and token
LOGS = [RUN_DIR / "worker.log", RUN_DIR / "intake.log", RUN_DIR / "intake-load.log"]
# a 5xx answer of the Prefect API as httpx and the runbooks' own clients word it (not the
# sandbox services' 503s, which the runbooks probe on purpose)
LOGGED_5XX = re.compile(
    r"(\b5\d\d\b[^\n]*127\.0\.0\.1:4200/api|127\.0\.0\.1:4200/api[^\n]*\b5\d\d\b|Prefect API[^\n]*\b5\d\d\b)"
)
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
# A person reads the plan before approving: the Resume comes this long after the run suspended
# (at once, it would also time the suspended process's own exit, which the approver never sees).
READING_SECONDS = 3.0
# A run's process exits just after it is recorded PAUSED; part 4 counts it once it has
SUSPENDED_EXIT_SECONDS = 2.0
# How long the benchmark waits for an answer from Prefect or the intake, and how often part 4
# sends an unanswered alert (50 at once on a slow 2-core machine: a few waited longer than 15 s)
CLIENT_TIMEOUT = 15.0
ALERT_ATTEMPTS = 3


class Counting:
    """httpx clients that count the 5xx answers they get."""

    def __init__(self) -> None:
        self.fivexx: list[str] = []
        self._lock = threading.Lock()

    def client(self, **kwargs: Any) -> httpx.Client:
        def count(response: httpx.Response) -> None:
            if response.status_code >= 500:
                with self._lock:
                    self.fivexx.append(f"{response.status_code} {response.request.method} {response.request.url.path}")
        return httpx.Client(timeout=CLIENT_TIMEOUT, event_hooks={"response": [count]}, **kwargs)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(label: str, values: list[float], target: str = "") -> None:
    if not values:
        print(f"  {label}: no samples")
        return
    print(f"  {label}: p50 {statistics.median(values):.2f} s, p99 {_pct(values, 0.99):.2f} s, "
          f"min {min(values):.2f} s, max {max(values):.2f} s, n={len(values)}" + (f"  ({target})" if target else ""))


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _until(what: str, check: Callable[[], Any], timeout: float, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:g} s")


def _alert(service: str, environment: str = "sandbox") -> dict:
    """Each alert its own outage (the intake correlates alerts for one service into one
    incident; a drill id keeps practice apart, and out of the success metrics)."""
    fingerprint = uuid.uuid4().hex
    return {"version": "4", "status": "firing", "groupKey": f"bench-{fingerprint[:8]}", "alerts": [{
        "status": "firing", "startsAt": datetime.now(timezone.utc).isoformat(), "fingerprint": fingerprint,
        "labels": {"alertname": "ServiceDown", "service": service, "environment": environment,
                   "drill_id": f"bench-{fingerprint[:12]}"},
        "annotations": {"summary": "engine latency benchmark"}}]}


class Bench:
    def __init__(self, token: str):
        self.counting = Counting()
        self.api = self.counting.client(base_url=API)
        self.intake = self.counting.client(base_url=INTAKE, headers={"Authorization": f"Bearer {token}"})
        self.sandbox = httpx.Client(base_url=SANDBOX, timeout=15)
        from incidents.store import IncidentStore

        self.store = IncidentStore()

    # -- helpers ------------------------------------------------------------------------------
    def post_alert(self, service: str) -> tuple[str, float]:
        t0 = time.time()
        answer = self.intake.post("/alerts/alertmanager", json=_alert(service))
        answer.raise_for_status()
        return answer.json()["started"][0]["flow_run_id"], t0

    def state(self, run_id: str) -> str:
        return self.api.get(f"/flow_runs/{run_id}").json()["state"]["type"]

    def approval_posted(self, service: str, environment: str, after: float) -> float | None:
        marker = f"Service: {service} ({environment})"
        for message in self.sandbox.get("/_sandbox/slack/messages").json():
            text = message.get("text") or ""
            if message["received_at"] >= after and text.startswith("⏸️ APPROVAL NEEDED") and marker in text:
                return message["received_at"]
        return None

    def first_action_started(self, run_id: str, after: float) -> float | None:
        approval = self.store.approval_for_run(run_id)
        if approval is None:
            return None
        started = [row.started_at.timestamp() for row in self.store.action_log(approval.incident_id)
                   if row.started_at.timestamp() >= after - 1]
        return min(started) if started else None

    # -- 1 ------------------------------------------------------------------------------------
    def first_step(self, alerts: int, gap: float) -> list[float]:
        print(f"1. alert -> first diagnosis step: {alerts} alerts for the healthy api, {gap:g} s apart")
        sent = []
        for _ in range(alerts):
            sent.append(self.post_alert("api"))
            time.sleep(gap)
        delays = []
        for run_id, t0 in sent:
            def started() -> float | None:
                tasks = self.api.post(
                    "/task_runs/filter",
                    json={"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": "probe-endpoints"}}},
                ).json()
                # the earliest: a healthy run probes again when it confirms "no impact"
                return min((_ts(t["start_time"]) for t in tasks if t.get("start_time")), default=None)
            delays.append(_until(f"run {run_id} diagnosing", started, 60, 0.2) - t0)
        _summary("alert -> first diagnosis step", delays, "targets p50 <= 0.5 s, p99 <= 1.5 s")
        # the healthy api's runs confirm, then close as "no impact"; the next part needs api free
        for run_id, _ in sent:
            _until(f"run {run_id} ended", lambda: self.state(run_id) in FINAL, 120, 0.5)
        return delays

    # -- 2 ------------------------------------------------------------------------------------
    def break_service(self, service: str) -> None:
        self.sandbox.post("/_sandbox/deploy", json={"service": service, "version": "v2-broken"}).raise_for_status()
        _until(f"{service} down", lambda: self.sandbox.get(f"/services/{service}/__ok").status_code == 503, 15)

    def plan_and_action(self, cycles: int) -> None:
        print(f"2. bad deploy of api, {cycles} times: alert -> approval request posted; approve -> first action")
        plans, actions, outcomes = [], [], []
        for _ in range(cycles):
            self.break_service("api")
            run_id, t0 = self.post_alert("api")
            plans.append(_until("approval request", lambda: self.approval_posted("api", "sandbox", t0), 60) - t0)
            _until("run suspended", lambda: self.state(run_id) == "PAUSED", 30)
            time.sleep(READING_SECONDS)
            t1 = time.time()
            answer = self.api.post(f"/flow_runs/{run_id}/resume", json={"run_input": {
                "approve": True, "approver": "bench", "reason": "engine latency benchmark"}}).json()
            assert answer.get("status") == "ACCEPT", answer
            actions.append(_until("first action", lambda: self.first_action_started(run_id, t1), 60) - t1)
            outcomes.append(_until("run ended", lambda: (s := self.state(run_id)) in FINAL and s, 120, 0.2))
        _summary("alert -> approval request posted", plans, "target p50 <= 3 s")
        _summary("approve (Resume) -> first action started", actions, "target p50 <= 0.5 s")
        print(f"  runs ended: {', '.join(f'{o.lower()} x{outcomes.count(o)}' for o in sorted(set(outcomes)))}")

    # -- 3 ------------------------------------------------------------------------------------
    def load_deployment(self, services: list[str]) -> tuple[str, Path]:
        raw = yaml.safe_load((ROOT / "config" / "sandbox.yaml").read_text())
        env = raw["environments"]["sandbox"]
        api = env["services"]["api"]
        env["services"] = {name: {"base_url": api["base_url"].replace("/services/api", f"/services/{name}"),
                                  "kubernetes": {"namespace": "sandbox", "deployment": name, "container": name},
                                  "github": {**api["github"], "repo": f"acme/{name}"},
                                  "rollback_strategy": api["rollback_strategy"], "scaling": api["scaling"]}
                           for name in services}
        raw["environments"] = {"sandbox-load": env}
        path = RUN_DIR / "load-config.yaml"
        path.write_text(yaml.safe_dump(raw))
        base = self.api.get("/deployments/name/service-down/sandbox").json()
        body = {key: base[key] for key in ("flow_id", "entrypoint", "path", "pull_steps", "work_pool_name",
                                           "work_queue_name", "parameter_openapi_schema", "enforce_parameter_schema")}
        body.update(name="sandbox-load", parameters={"service": services[0], "environment": "sandbox-load"},
                    job_variables={"env": {"RUNBOOKS_CONFIG": str(path)}},
                    description="The engine latency benchmark's many services (benchmarks/engine_latency.py).")
        answer = self.api.post("/deployments/", json=body)
        answer.raise_for_status()
        return answer.json()["id"], path

    def many(self, sizes: list[int]) -> None:
        services = [f"svc-{n:03d}" for n in range(1, max(sizes) + 1)]
        print(f"3. incidents at once: {', '.join(map(str, sizes))} service-down runs, each for its own broken service")
        for name in services:
            self.sandbox.post("/_sandbox/services", json={"name": name}).raise_for_status()
            self.sandbox.post("/_sandbox/deploy", json={"service": name, "version": "v2-broken"}).raise_for_status()
        deployment, _ = self.load_deployment(services)
        for size in sizes:
            self.round(deployment, services[:size])

    def many_services(self, count: int, token: str) -> None:
        """Part 4: one alert per service, all at once, through an intake that knows them."""
        services = [f"svc-{n:03d}" for n in range(1, count + 1)]
        print(f"4. many services: {count} alerts at once, one per service, through the intake")
        for name in services:
            self.sandbox.post("/_sandbox/services", json={"name": name}).raise_for_status()
            self.sandbox.post("/_sandbox/deploy", json={"service": name, "version": "v2-broken"}).raise_for_status()
        _, config = self.load_deployment(services)
        intake, url = _second_intake(config)
        try:
            client = self.counting.client(base_url=url, headers={"Authorization": f"Bearer {token}"})
            parts = _parts(intake)
            time.sleep(3.0)  # what an earlier round left (runs being cancelled) settles first
            idle = _idle(parts, 5.0)
            parts.start()
            t_start = time.monotonic()
            started = self._alerts_at_once(client, services)
            plans = self._plans(started, "sandbox-load", 180)
            for run_id, _ in started.values():  # and suspended: its input form saved, its process gone
                _until(f"run {run_id} paused", lambda run_id=run_id: self.state(run_id) in ("PAUSED", *FINAL), 60, 0.2)
            time.sleep(SUSPENDED_EXIT_SECONDS)  # the suspended processes exit and are reaped (counted)
            seconds = time.monotonic() - t_start
            spent = parts.spent()
            states = [self.state(run_id) for run_id, _ in started.values()]
            print(f"  {len(plans)}/{count} reached their approval request in {seconds:.1f} s; "
                  f"runs now: {', '.join(f'{s.lower()} x{states.count(s)}' for s in sorted(set(states)))}")
            _summary(f"time-to-plan ({count} alerts at once)", list(plans.values()), "goal p99 <= 30 s")
            _cpu_report(spent, idle, seconds, max(len(plans), 1))
            self.clean_up(started)
        finally:
            intake.terminate()
            intake.wait(20)

    def _alerts_at_once(self, client: httpx.Client, services: list[str]) -> dict[str, tuple[str, float]]:
        started: dict[str, tuple[str, float]] = {}
        lock = threading.Lock()

        unanswered: list[str] = []

        def post(name: str) -> None:
            t0, alert = time.time(), _alert(name, "sandbox-load")
            for attempt in range(1, ALERT_ATTEMPTS + 1):
                try:
                    answer = client.post("/alerts/alertmanager", json=alert)
                    break
                except httpx.TimeoutException as exc:  # Alertmanager sends it again; the intake dedups it
                    with lock:
                        unanswered.append(f"{name} attempt {attempt}: {type(exc).__name__}")
                    if attempt == ALERT_ATTEMPTS:
                        return
            answer.raise_for_status()
            with lock:
                started[name] = (answer.json()["started"][0]["flow_run_id"], t0)

        threads = [threading.Thread(target=post, args=(name,)) for name in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        print(f"  alerts not answered within {CLIENT_TIMEOUT:g} s (sent again, as Alertmanager does): "
              f"{len(unanswered)}; never answered: {len(services) - len(started)}")
        return started

    def _plans(self, started: dict[str, tuple[str, float]], environment: str, timeout: float) -> dict[str, float]:
        """Seconds from each alert to its approval request in Slack."""
        plans: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(plans) < len(started) and time.monotonic() < deadline:
            messages = self.sandbox.get("/_sandbox/slack/messages").json()
            for name, (_run_id, t0) in started.items():
                marker = f"Service: {name} ({environment})"
                hits = [m["received_at"] for m in messages if m["received_at"] >= t0 and marker in (m.get("text") or "")
                        and (m.get("text") or "").startswith("⏸️ APPROVAL NEEDED")]
                if hits and name not in plans:
                    plans[name] = min(hits) - t0
            time.sleep(0.25)
        return plans

    def round(self, deployment: str, services: list[str]) -> None:
        started: dict[str, tuple[str, float]] = {}
        lock = threading.Lock()

        def start(name: str) -> None:
            t0 = time.time()
            run = self.api.post(f"/deployments/{deployment}/create_flow_run", json={
                "parameters": {"service": name, "environment": "sandbox-load"}}).json()
            with lock:
                started[name] = (run["id"], t0)

        threads = [threading.Thread(target=start, args=(name,)) for name in services]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        plans = self._plans(started, "sandbox-load", 180)
        states = [self.state(run_id) for run_id, _ in started.values()]
        print(f"  {len(services):>2} at once: {len(plans)}/{len(services)} reached their approval request; "
              f"runs now: {', '.join(f'{s.lower()} x{states.count(s)}' for s in sorted(set(states)))}")
        _summary(f"time-to-plan ({len(services)} at once)", list(plans.values()))
        self.clean_up(started)

    def clean_up(self, started: dict[str, tuple[str, float]]) -> None:
        """Cancel the waiting runs (nothing to stop: they are suspended), delete them, and resolve
        every open incident of the load's environment. Deleted: Prefect's cancellation clean-up
        looks at every run cancelled within a day, every 20 s, and hundreds of the benchmark's
        own would be the next round's load."""
        for run_id, _ in started.values():
            self.api.post(f"/flow_runs/{run_id}/set_state", json={"force": True, "state": {
                "type": "CANCELLED", "name": "Cancelled", "message": "Cancelled by the engine latency benchmark"}})
            self.api.delete(f"/flow_runs/{run_id}")
        # every incident the load opened, also one whose run had not recorded its approval yet
        for incident in self.store.list(limit=1000, open_only=True, environment="sandbox-load"):
            self.store.close(incident.id, "engine latency benchmark", "cancelled by the benchmark",
                             postmortem_needed=False)


def _second_intake(config: Path) -> tuple[subprocess.Popen, str]:
    """An intake like `make up`'s, on a free port, whose config is the generated one."""
    from alert_intake import _free_port  # the benchmarks' shared helper (same folder), not the test suite's

    from devstack.stack import stack_env

    port = _free_port()
    env = {**stack_env(), "RUNBOOKS_CONFIG": str(config)}
    log = (RUN_DIR / "intake-load.log").open("a")
    process = subprocess.Popen([sys.executable, "-m", "deployments.intake", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    _until("the second intake", lambda: _answers(f"{url}/healthz"), 60, 0.2)
    return process, url


def _answers(url: str) -> bool:
    try:
        return http.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _parts(intake: subprocess.Popen) -> Parts:
    """The stack's parts by their process sessions (`make up` starts each in its own)."""
    parts: dict[str, set[int | str]] = {}
    for name, component in (("server", "prefect-server"), ("worker", "worker")):
        pid_file = RUN_DIR / f"{component}.pid"
        sid = session_of(int(pid_file.read_text())) if pid_file.exists() else None
        if sid is None:
            raise SystemExit(f"engine latency: no {component} process (.run/{component}.pid): is `make up` running?")
        parts[name] = {sid}
    parts["intake"] = {intake.pid}
    parts["postgres"] = {"postgres"}
    return Parts(parts)


def _idle(parts: Parts, seconds: float) -> dict[str, float]:
    """CPU-seconds per second each part spends with nothing to do (polling, heartbeats)."""
    parts.start()
    time.sleep(seconds)
    return {name: value / seconds for name, value in parts.spent().items()}


def _cpu_report(spent: dict[str, float], idle: dict[str, float], seconds: float, runs: int) -> None:
    """CPU-seconds per run: each part's spend less its idle rate over the round's length."""
    work = {name: max(0.0, value - idle.get(name, 0.0) * seconds) for name, value in spent.items()}
    stack = sum(value for name, value in work.items() if name != "machine")
    print(f"  CPU-seconds per run to its approval, suspended ({runs} runs, idle spend taken off): "
          f"stack {stack / runs:.2f} (goal <= 1.0) = " +
          " + ".join(f"{name} {work[name] / runs:.2f}" for name in ("server", "worker", "intake", "postgres")) +
          f"; whole machine {work['machine'] / runs:.2f}")
    print("  raw CPU-seconds of the round: " + ", ".join(f"{name} {value:.1f}" for name, value in spent.items()))


def _log_sizes() -> list[int]:
    return [path.stat().st_size if path.exists() else 0 for path in LOGS]


def _logged_5xx(offsets: list[int]) -> list[str]:
    found = []
    for path, offset in zip(LOGS, offsets):
        if path.exists():
            with path.open(errors="replace") as log:
                log.seek(offset)
                found += [f"{path.name}: {line.strip()[:160]}" for line in log if LOGGED_5XX.search(line)]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=20)
    parser.add_argument("--gap", type=float, default=2.0, help="seconds between the alerts of part 1")
    parser.add_argument("--cycles", type=int, default=8)
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--parts", default="1,2,3", help="which parts to run: 1, 2, 3, 4 (see above)")
    parser.add_argument("--services", type=int, default=50, help="part 4: how many services, one alert each")
    args = parser.parse_args()
    token_file = RUN_DIR / "alert-token"
    try:
        http.get(f"{INTAKE}/healthz", timeout=2).raise_for_status()
        http.get(f"{API}/health", timeout=2).raise_for_status()
    except httpx.HTTPError:
        print("engine latency: skipped - `make up` is not running (intake :8787 and Prefect :4200 must answer)")
        return 0
    token = os.environ.get("RUNBOOKS_ALERT_TOKEN") or token_file.read_text().strip()
    bench = Bench(token)
    offsets = _log_sizes()
    parts = set(args.parts.split(","))
    if "1" in parts:
        bench.first_step(args.alerts, args.gap)
    if "2" in parts:
        bench.plan_and_action(args.cycles)
    if "3" in parts:
        bench.many([int(size) for size in args.sizes.split(",")])
    if "4" in parts:
        bench.many_services(args.services, token)
    logged = _logged_5xx(offsets)
    print(f"Prefect API 5xx: {len(bench.counting.fivexx)} answered to the benchmark, {len(logged)} logged by the "
          "worker and the intake")
    for line in (bench.counting.fivexx + logged)[:10]:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
