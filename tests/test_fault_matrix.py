"""The fault matrix: each outside dependency of a runbook run — Slack, GitHub, the Kubernetes
API, the incident store (PostgreSQL), the Prefect API, Prometheus, the service's own PostgreSQL
and its Redis cache — down, slow past its timeout, answering 5xx (PostgreSQL and Redis: a
protocol error) and 429 with Retry-After, during each phase of a run (open, diagnose, act,
verify). The run is a real runbook, approved automatically as a drill (so no cell waits for a
person), against the sandbox: service-down after a bad deploy for the first five, high-error-rate
under an overload (scale up) for Prometheus, and database-issues for a lock held by an idle
transaction while the cache evicts (terminate the blocker, clear the cache) for the service's
PostgreSQL and Redis. Every dependency is reached through a fault proxy (tests/faultproxy.py)
or the sandbox's own fault switch; the faults themselves are made and removed directly.

For each cell: the run ends, in a clear state with a clear message; a notification failure
never stops the remediation; a remediation failure is always reported; the incident record
is intact; no destructive step runs twice. The matrix (cells passed / total) is printed.

Phases: `open` is the window until the incident is opened (the read-only checks run at the
same time by design); `diagnose` starts when the incident is open and ends with the checks;
`act` is the approved actions; `verify` is the verification and the close that follows.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import httpx
import psycopg
import pytest
import redis
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from incidents.alerts import AlertParameter
from incidents.store import DrillStore, IncidentStore
from incidents.timeline_payloads import Diagnosis
from integrations import http
from sandbox.http import Fault
from sandbox.world import RUNBOOKS_KUBE_TOKEN, SLACK_PATH
from tests.conftest import break_deploy, free_port, start_prometheus
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect_server")

PHASES = ("open", "diagnose", "act", "verify")
MODES = {"slack": ("down", "slow", "5xx", "429"), "github": ("down", "slow", "5xx", "429", "lost"),
         "kubernetes": ("down", "slow", "5xx", "429", "lost"), "store": ("down", "slow", "protocol"),
         "prefect": ("down", "slow", "5xx", "429"), "prometheus": ("down", "slow", "5xx", "429"),
         "postgres": ("down", "slow", "protocol"), "redis": ("down", "slow", "protocol")}
NAMES = {"slack": "Slack", "github": "GitHub", "kubernetes": "Kubernetes", "store": "incident store",
         "prefect": "Prefect", "prometheus": "Prometheus", "postgres": "PostgreSQL", "redis": "Redis"}
# Which runbook each dependency's cells run, and the fault it fixes.
SCENARIOS = {"prometheus": ("high-error-rate", "error-spike"), "postgres": ("database-issues", "pg-lock"),
             "redis": ("database-issues", "pg-lock")}
# Where the dependency's failure must not stop the remediation: the run must still resolve.
MUST_RESOLVE = {"slack": PHASES,  # a notification failure never stops a remediation
                "github": ("open", "diagnose", "verify"), "kubernetes": ("open", "verify"),
                "prometheus": PHASES,  # a second opinion on the error rate, never needed to act
                "postgres": ("open",), "redis": ("open", "diagnose", "verify")}


class Switch:
    """Turns one dependency's fault on and off."""

    def __init__(self, world, proxies: dict[str, FaultProxy]):
        self.world, self.proxies = world, proxies
        self.used = False  # whether the fault has been on in this cell

    def on(self, dependency: str, mode: str) -> None:
        self.used = True
        if dependency == "kubernetes" and mode in ("5xx", "429", "lost"):  # TLS: the sandbox answers it
            self.world.faults.set("kubernetes", Fault(status={"5xx": 503, "429": 429}.get(mode),
                                                      retry_after=1 if mode == "429" else None,
                                                      lose_response=mode == "lost"))
            return
        self.proxies[dependency].mode = {"protocol": "garbage"}.get(mode, mode)

    def off(self) -> None:
        self.world.faults.clear("kubernetes")
        for proxy in self.proxies.values():
            proxy.mode = "pass"


@pytest.fixture(scope="module")
def cache_server(tmp_path_factory):
    """A Redis of the matrix's own with a memory limit, so the cache can really be under pressure
    (evicting) without touching the machine's shared Redis."""
    port = free_port()
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru",
                                "--dir", str(tmp_path_factory.mktemp("redis"))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, socket_timeout=2)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("the matrix's redis-server did not start")
            time.sleep(0.1)
    yield client
    process.terminate()
    process.wait(10)


@dataclass
class Lane:
    """Cells run in two lanes at once, each with a sandbox, an environment of the config and
    fault proxies of its own. Lane "b" has the session's sandbox, whose api database the
    PostgreSQL and Redis rows lock and Prometheus scrapes; lane "a" has a second sandbox with an
    api database of its own, so one lane's lock is never in the other's way. The incident store is shared: its row
    runs after both lanes, alone."""

    world: Any
    environment: str
    proxies: dict[str, FaultProxy]


@pytest.fixture(scope="module")
def second_world(tmp_path_factory, app_database_url):
    from sandbox.world import Sandbox

    world = Sandbox(state_dir=tmp_path_factory.mktemp("sandbox-a"), ready_delay=0.3, tick_seconds=0.1,
                    database_url=app_database_url + "_lane_a").start()
    yield world
    world.stop()


@pytest.fixture(scope="module")
def prometheus_server(sandbox, tmp_path_factory):
    """A real Prometheus scraping lane b's api every second."""
    process, url = start_prometheus(tmp_path_factory.mktemp("prometheus"), sandbox)
    yield url
    process.terminate()
    process.wait(10)


def _world_proxies(world, prefix: str, config_dir) -> tuple[dict[str, FaultProxy], dict[str, str]]:
    """Slack, GitHub and the Kubernetes API of one sandbox behind proxies, and the variables
    that point the lane's environment at them."""
    sandbox_port = int(world.url.rsplit(":", 1)[1])
    kube_port = int(world.kube_url.rsplit(":", 1)[1])
    # "slow" holds a connection a little longer than the client waits (1 s)
    made = {"slack": FaultProxy("127.0.0.1", sandbox_port, slow_seconds=1.3),
            "github": FaultProxy("127.0.0.1", sandbox_port, slow_seconds=1.3),
            "kubernetes": FaultProxy("127.0.0.1", kube_port, slow_seconds=1.3)}
    kubeconfig = config_dir / f"{prefix.lower()}.kubeconfig"
    kubeconfig.write_text(world.kubeconfig_text(RUNBOOKS_KUBE_TOKEN).replace(f":{kube_port}",
                                                                            f":{made['kubernetes'].port}"))
    secret = prefix.replace("RUNBOOKS_", "RUNBOOKS_SECRET_")
    return made, {f"{prefix}_GITHUB_URL": f"http://127.0.0.1:{made['github'].port}/github",
                  f"{secret}_SLACK_URL": f"http://127.0.0.1:{made['slack'].port}{SLACK_PATH}",
                  f"{prefix}_KUBECONFIG": str(kubeconfig), f"{prefix}_SANDBOX_URL": world.url}


@pytest.fixture(scope="module")
def lanes(sandbox, second_world, test_config, database_url, cache_server, prometheus_server):
    from prefect.settings import PREFECT_API_URL

    a, a_env = _world_proxies(second_world, "RUNBOOKS_MATRIX_A", test_config.parent)
    b, b_env = _world_proxies(sandbox, "RUNBOOKS_MATRIX", test_config.parent)
    api = httpx.URL(PREFECT_API_URL.value())
    store = httpx.URL(database_url.replace("postgresql://", "http://"))
    a["prefect"] = FaultProxy(api.host, api.port, slow_seconds=2.5)  # Prefect's client waits 2 s
    b.update({"prometheus": FaultProxy("127.0.0.1", httpx.URL(prometheus_server).port, slow_seconds=1.3),
              "store": FaultProxy(store.host, store.port or 5432, slow_seconds=1.3),
              # past the clients' own timeouts: PostgreSQL's connect_timeout 3 s, Redis's socket timeout 3 s
              "postgres": FaultProxy(*_host_port(os.environ["RUNBOOKS_SECRET_API_DATABASE_URL"]), slow_seconds=3.3),
              "redis": FaultProxy("127.0.0.1", cache_server.connection_pool.connection_kwargs["port"],
                                  slow_seconds=3.3)})
    saved = dict(os.environ)
    os.environ.update(
        a_env, **b_env, RUNBOOKS_DATABASE_TIMEOUT="1",
        RUNBOOKS_MATRIX_PROMETHEUS_URL=f"http://127.0.0.1:{b['prometheus'].port}",
        RUNBOOKS_SECRET_MATRIX_API_DATABASE_URL=make_conninfo(os.environ["RUNBOOKS_SECRET_API_DATABASE_URL"],
                                                              host="127.0.0.1", port=str(b["postgres"].port)),
        RUNBOOKS_SECRET_MATRIX_API_CACHE_URL=f"redis://127.0.0.1:{b['redis'].port}/0",
        RUNBOOKS_DATABASE_URL=database_url.replace(f"{store.host}:{store.port or 5432}",
                                                   f"127.0.0.1:{b['store'].port}"))
    yield {"a": Lane(second_world, "sandbox-matrix-a", a), "b": Lane(sandbox, "sandbox-matrix", b)}
    os.environ.clear()
    os.environ.update(saved)
    for proxy in [*a.values(), *b.values()]:
        proxy.close()


def _host_port(dsn: str) -> tuple[str, int]:
    params = conninfo_to_dict(dsn)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


def _service(dependency: str) -> str:
    """GitHub's cells use api, whose rollback is a GitHub workflow, and so do the cells whose
    runbook is not service-down; the others use frontend, rolled back through the Kubernetes
    API (kubectl's undo), which is quicker."""
    return "frontend" if dependency in ("slack", "kubernetes", "store", "prefect") else "api"


def _image(world, service: str) -> str:
    return world.cluster.get("deployments", "sandbox", service)["spec"]["template"]["spec"]["containers"][0]["image"]


def _revision(world, service: str) -> int:
    return int(world.cluster.get("deployments", "sandbox", service)["metadata"]["annotations"][
        "deployment.kubernetes.io/revision"])


def _replicas(world, service: str) -> int:
    return world.cluster.get("deployments", "sandbox", service)["spec"]["replicas"]


def _rollbacks(world) -> int:
    return len([r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"])


@dataclass
class Target:
    """The fault a cell's runbook must fix, made directly (never through a fault proxy), and
    what the sandbox looked like before the run."""

    dependency: str
    service: str
    scenario: str
    fault: str
    good_image: str
    revision: int
    replicas: int
    rollbacks: int
    state: Any = None  # the drill fault's state (tasks.faults), for the runbooks other than service-down

    def healed(self, world) -> bool:
        if self.fault == "bad-deploy":
            return _image(world, self.service) == self.good_image
        if self.fault == "error-spike":
            return _replicas(world, self.service) > self.replicas
        holder = self.state.sessions[0]
        with psycopg.connect(os.environ["RUNBOOKS_SECRET_API_DATABASE_URL"], autocommit=True) as admin:
            return admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                                 (holder.info.backend_pid,)).fetchone()[0] == 0

    def clean_up(self) -> None:
        if self.state is not None:
            from tasks.context import RunContext
            from tasks.faults import cleanup

            cleanup(RunContext.load("sandbox", self.service), self.state)


def _settle(world, timeout: float = 30) -> None:
    """Workflow runs an earlier cell dispatched finish first (one whose dispatch answer was lost
    goes on after its runbook gave up): their runner would act on the next cell's cluster."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(run.get("status") != "completed" for repo in world.github.repos.values()
                                              for run in repo.runs):
        time.sleep(0.1)


def _prepare(world, cache: redis.Redis, dependency: str) -> Target:
    """Reset the sandbox and make the fault: a bad deploy, an overload, or a lock held by an
    idle transaction (with waiters) while the service's cache evicts."""
    from incidents.drills import resolve_fault
    from tasks.context import RunContext
    from tasks.faults import inject, signal, wait_for

    _settle(world)
    world.reset()
    service = _service(dependency)
    scenario, fault = SCENARIOS.get(dependency, ("service-down", "bad-deploy"))
    target = Target(dependency, service, scenario, fault, _image(world, service), _revision(world, service),
                    _replicas(world, service), _rollbacks(world))
    if fault == "bad-deploy":
        break_deploy(world, service, f"{target.good_image.rsplit(':', 1)[0]}:v9-broken")
    elif fault == "error-spike":  # 200 rps against 3 replicas of 40 rps: a share of requests fails
        http.post(f"{world.url}/_sandbox/load", json={"service": service, "rps": 200}, timeout=5).raise_for_status()
    else:
        ctx = RunContext.load("sandbox", service)  # the direct paths, not the matrix's proxies
        if fault == "pg-lock":
            cache.flushdb()
            cache.config_resetstat()
            fill = cache.pipeline(transaction=False)
            for n in range(400):  # ~4 MB into 2 MB: the cache evicts
                fill.set(f"api:item:{n}", os.urandom(10_000))
            fill.execute()
        target.state = inject(ctx, resolve_fault(fault))
        if not wait_for(lambda: signal(ctx, target.state), 10, poll=0.1):
            target.clean_up()
            pytest.fail(f"the {fault} fault did not show")
    return target


def _cell(lane: Lane, target: Target, mode: str, phase: str) -> dict[str, Any]:
    """One run of the target's runbook, in the lane's environment, with the dependency's fault
    on during `phase`."""
    import tasks.lifecycle as lifecycle
    from flows.database_issues import DATABASE_ISSUES
    from flows.high_error_rate import HIGH_ERROR_RATE
    from flows.service_down import SERVICE_DOWN
    from tasks.context import RunContext
    from tasks.scenario import PHASES

    dependency, service, env = target.dependency, target.service, lane.environment
    runbook = {"service-down": SERVICE_DOWN, "high-error-rate": HIGH_ERROR_RATE,
               "database-issues": DATABASE_ISSUES}[target.scenario]
    switch = Switch(lane.world, lane.proxies)
    opened: list = []  # the open_incident future of this cell's run

    def open_(ctx, *args, **kwargs):
        opened.append(PHASES.open(ctx, *args, **kwargs))
        return opened[0]

    def diagnose(ctx):
        opened[0].wait(30)
        if phase == "open":
            switch.off()
        if phase == "diagnose":
            switch.on(dependency, mode)
        try:
            return runbook.diagnose(ctx)
        finally:
            if phase == "diagnose":
                switch.off()

    def verify(ctx, findings, plan):
        if phase == "verify":
            switch.on(dependency, mode)  # stays on through the close; off when the run ends
        return runbook.verify(ctx, findings, plan)

    def act(ctx, plan, grant):
        if phase == "act":
            switch.on(dependency, mode)
        try:
            return PHASES.execute(ctx, plan, grant)
        finally:
            if phase == "act":
                switch.off()

    scenario = replace(runbook, diagnose=diagnose, verify=verify,
                       phases=replace(PHASES, open=open_, execute=act))
    drill_id = f"matrix-{uuid.uuid4().hex[:10]}"
    DrillStore().start_drill(drill_id, target.fault, target.scenario, env, service, "auto", 0, None)
    alert = AlertParameter(status="firing", fingerprint=drill_id, starts_at=datetime.now(timezone.utc).isoformat(),
                           labels={"alertname": "MatrixCell", "service": service, "environment": env,
                                   "drill_id": drill_id})
    outcome: dict[str, Any] = {}

    def run() -> None:
        from prefect import flow
        from prefect.settings import (
            PREFECT_API_REQUEST_TIMEOUT,
            PREFECT_API_URL,
            PREFECT_CLIENT_MAX_RETRIES,
            temporary_settings,
        )

        @flow(name=target.scenario, validate_parameters=False)
        def cell() -> dict:
            return lifecycle.run_scenario(scenario, RunContext.load(env, service), None, False, alert).as_dict()

        updates = {}
        if dependency == "prefect":
            updates = {PREFECT_API_URL: f"http://127.0.0.1:{lane.proxies['prefect'].port}/api",
                       PREFECT_API_REQUEST_TIMEOUT: 2.0, PREFECT_CLIENT_MAX_RETRIES: 1}
        try:  # building a settings object costs ~0.1 CPU-s: only the Prefect row changes them
            with temporary_settings(updates=updates) if updates else nullcontext():
                outcome["result"] = cell()
        except BaseException as exc:  # noqa: BLE001 - a failed run is an outcome too
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            outcome["before_fault"] = not switch.used

    if phase == "open":
        switch.on(dependency, mode)
    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(90)
    switch.off()
    outcome["seconds"] = time.monotonic() - started
    outcome["ended"] = not thread.is_alive()
    outcome["drill_id"] = drill_id
    DrillStore().finish_drill(drill_id, "done", None, None, None, None)
    return outcome


def _judge(lane: Lane, target: Target, phase: str, outcome: dict[str, Any]) -> list[str]:
    """What is wrong with this cell's outcome (an empty list: the cell passes)."""
    problems, world = [], lane.world
    if not outcome["ended"]:
        return ["the run did not end within 90 s"]
    dependency, service = target.dependency, target.service
    result, error = outcome.get("result"), outcome.get("error", "")
    store = IncidentStore()
    found = [i for i in store.list(limit=50, environment=lane.environment) if outcome["drill_id"] in i.dedup_key]
    incident = found[0] if found else None
    rollbacks = _rollbacks(world) - target.rollbacks
    if rollbacks > 1:
        problems.append(f"the rollback workflow ran {rollbacks} times")
    if _revision(world, service) > target.revision + 1 + (target.fault == "bad-deploy"):  # the break, one undo
        problems.append(f"{service} was changed {_revision(world, service) - target.revision} times")
    name = NAMES[dependency]
    if result is None:  # the run failed: it must say what failed
        if name.lower() not in error.lower() and dependency != "prefect":
            problems.append(f"the failure does not name {name}: {error[:200]}")
        if dependency == "prefect" and not error:
            problems.append("no error for a failed run")
    else:
        state = result.get("outcome")
        if phase in MUST_RESOLVE.get(dependency, ()) and state != "resolved":
            why = (
                next(
                    (e.message for e in reversed(store.timeline(incident.id)) if e.kind in ("escalated", "diagnosed")),
                    "",
                )
                if incident is not None
                else ""
            )
            problems.append(f"a {name} failure in {phase} stopped the remediation: {state} {result.get('error', '')} "
                            f"{why[:300]}")
        if state == "remediation_failed":
            if name.lower() not in result.get("error", "").lower():
                problems.append(f"the remediation failure does not name {name}: {result.get('error')}")
        if state == "resolved" and not target.healed(world):
            problems.append(f"resolved, but the {target.fault} fault is still there")
        if state not in ("resolved", "remediation_failed", "not_recovered", "escalated", "abstained", "no_impact"):
            problems.append(f"unexpected outcome {state}")
    timeline = store.timeline(incident.id) if incident is not None else []
    kinds = [e.kind for e in timeline]
    if result is not None and result.get("outcome") == "remediation_failed" and incident and dependency != "store" \
            and "escalated" not in kinds:
        problems.append("the remediation failure was not escalated")
    if incident is not None:  # the record says what happened, in order, each action once
        if kinds and kinds[0] != "detected":
            problems.append(f"the timeline starts with {kinds[0]}")
        if result and result.get("outcome") == "resolved" and dependency != "store" and incident.resolved_at is None:
            problems.append("resolved, but the record is not")
        actions = store.action_log(incident.id)
        repeated = [(a.kind, a.attempts) for a in actions if a.attempts != 1]
        if repeated:
            problems.append(f"an action was started more than once: {repeated}")
        if kinds.count("action") > len(actions):
            problems.append("an action was recorded twice")
    elif dependency != "store" and not (dependency == "prefect" and phase == "open"):
        problems.append(f"no incident was recorded ({(result or {}).get('outcome') or error[:200]})")
    if dependency == "prometheus" and phase == "diagnose" and incident is not None:
        diagnosis = next((e.data for e in timeline if isinstance(e.data, Diagnosis)), None)
        seen = diagnosis.findings.get("error rate (Prometheus)") if diagnosis else None
        if seen is None or "could not check" not in seen.summary or "Prometheus" not in seen.summary:
            problems.append(f"the diagnosis does not say Prometheus could not be checked: {seen}")
    return problems


def _selected() -> dict[str, tuple[str, ...]]:
    """RUNBOOKS_MATRIX_ONLY=slack,github (dependencies) or slack:5xx (one row) runs part of the matrix."""
    only = [item.strip() for item in os.environ.get("RUNBOOKS_MATRIX_ONLY", "").split(",") if item.strip()]
    if not only:
        return MODES
    return {dep: tuple(m for m in modes if dep in only or f"{dep}:{m}" in only)
            for dep, modes in MODES.items() if any(o.split(":")[0] == dep for o in only)}


LANES = {"a": ("github", "kubernetes", "prefect"), "b": ("slack", "prometheus", "postgres", "redis")}  # ~even


def _run_cell(lane: Lane, cache: redis.Redis, dependency: str, mode: str,
              phase: str) -> tuple[list[str], dict[str, Any]]:
    """Prepare, run and judge one cell: its problems (none: it passed) and the run's outcome."""
    target, outcome = None, {"seconds": 0.0}
    try:
        target = _prepare(lane.world, cache, dependency)
        outcome = _cell(lane, target, mode, phase)
        return _judge(lane, target, phase, outcome), outcome
    except (Exception, pytest.fail.Exception) as exc:  # noqa: BLE001 - a broken cell fails; the lane goes on
        return [f"the cell itself failed: {type(exc).__name__}: {exc}"], outcome
    finally:
        if target is not None:
            target.clean_up()


def _run_lane(lane: Lane, cache: redis.Redis, dependencies: list[str], cells: list,
              reruns: list) -> None:
    for dependency in dependencies:
        for mode in _selected()[dependency]:
            for phase in PHASES:
                problems, outcome = _run_cell(lane, cache, dependency, mode, phase)
                # The Prefect row's client gets one retry, so that its faults end a run quickly; the
                # test server may still fail a run with its own 503 before the fault is even on.
                # That run tested nothing: once more.
                if dependency == "prefect" and outcome.get("before_fault"):
                    reruns.append(f"{dependency} {mode} {phase}: {outcome['error'][:120]}")
                    problems, outcome = _run_cell(lane, cache, dependency, mode, phase)
                state = (outcome.get("result") or {}).get("outcome") or outcome.get("error", "")[:60]
                cells.append((dependency, mode, phase, problems, state, outcome["seconds"]))


def test_the_fault_matrix(world, lanes, cache_server, capsys):
    cells: list = []
    reruns: list[str] = []
    started = time.monotonic()
    threads = [threading.Thread(target=_run_lane, args=(lanes[name], cache_server,
                                                        [d for d in deps if d in _selected()], cells, reruns))
               for name, deps in LANES.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(1800)
    if "store" in _selected():  # the store is every lane's: its row runs alone
        _run_lane(lanes["b"], cache_server, ["store"], cells, reruns)
    wall = time.monotonic() - started
    with capsys.disabled():
        print(f"\nfault matrix: {sum(not c[3] for c in cells)}/{len(cells)} cells passed "
              f"(runs {sum(c[5] for c in cells):.0f} s, {wall:.0f} s wall in two lanes; {len(reruns)} run again)")
        for dependency, modes in _selected().items():
            for mode in modes:
                row = sorted(
                    (c for c in cells if c[0] == dependency and c[1] == mode), key=lambda c: PHASES.index(c[2])
                )
                print(f"  {dependency:<11} {mode:<9} " + "  ".join(
                    f"{c[2]}:{'FAIL' if c[3] else 'ok'} {c[4][:18]} {c[5]:.1f}s" for c in row))
        for rerun in reruns:
            print(f"  run again (its first run failed before the fault was on): {rerun}")
    assert len(cells) == sum(len(m) for m in _selected().values()) * len(PHASES), "cells are missing"
    failures = [(c[0], c[1], c[2], c[3]) for c in cells if c[3]]
    assert not failures, failures
