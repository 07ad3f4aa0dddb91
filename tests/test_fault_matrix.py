"""The fault matrix: each outside dependency of a runbook run — Slack, GitHub, the Kubernetes
API, the incident store (PostgreSQL), the Prefect API — down, slow past its timeout, answering
5xx (the store: a protocol error) and 429 with Retry-After, during each phase of a run (open,
diagnose, act, verify). The run is the real service-down runbook, approved automatically as a
drill (so no cell waits for a person), against the sandbox, every dependency reached through
a fault proxy (tests/faultproxy.py) or the sandbox's own fault switch.

For each cell: the run ends, in a clear state with a clear message; a notification failure
never stops the remediation; a remediation failure is always reported; the incident record
is intact; no destructive step runs twice. The matrix (cells passed / total) is printed.

Phases: `open` is the window until the incident is opened (the read-only checks run at the
same time by design); `diagnose` starts when the incident is open and ends with the checks;
`act` is the approved actions; `verify` is the verification and the close that follows.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Callable

import httpx
import pytest

from incidents.store import DrillStore, IncidentStore
from sandbox.http import Fault
from sandbox.world import SLACK_PATH
from tests.conftest import break_api, kubectl
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.usefixtures("prefect_server")

PHASES = ("open", "diagnose", "act", "verify")
MODES = {"slack": ("down", "slow", "5xx", "429"), "github": ("down", "slow", "5xx", "429"),
         "kubernetes": ("down", "slow", "5xx", "429"), "store": ("down", "slow", "protocol"),
         "prefect": ("down", "slow", "5xx", "429")}
NOTIFIERS = ("slack",)  # a failure of these may never stop a remediation
NAMES = {"slack": "Slack", "github": "GitHub", "kubernetes": "Kubernetes", "store": "incident store",
         "prefect": "Prefect"}


class Switch:
    """Turns one dependency's fault on and off."""

    def __init__(self, world, proxies: dict[str, FaultProxy]):
        self.world, self.proxies = world, proxies

    def on(self, dependency: str, mode: str) -> None:
        if dependency == "kubernetes" and mode in ("5xx", "429"):  # TLS: the sandbox answers it
            self.world.faults.set("kubernetes", Fault(status=503 if mode == "5xx" else 429,
                                                      retry_after=1 if mode == "429" else None))
            return
        self.proxies[dependency].mode = {"protocol": "garbage"}.get(mode, mode)

    def off(self) -> None:
        self.world.faults.clear("kubernetes")
        for proxy in self.proxies.values():
            proxy.mode = "pass"


@pytest.fixture(scope="module")
def proxies(sandbox, test_config, database_url):
    from prefect.settings import PREFECT_API_URL

    sandbox_port = int(sandbox.url.rsplit(":", 1)[1])
    kube_port = int(sandbox.kube_url.rsplit(":", 1)[1])
    api = httpx.URL(PREFECT_API_URL.value())
    store = httpx.URL(database_url.replace("postgresql://", "http://"))
    # "slow" holds a connection a little longer than the client waits (1 s; Prefect's client 2 s)
    made = {"slack": FaultProxy("127.0.0.1", sandbox_port, slow_seconds=1.3),
            "github": FaultProxy("127.0.0.1", sandbox_port, slow_seconds=1.3),
            "kubernetes": FaultProxy("127.0.0.1", kube_port, slow_seconds=1.3),
            "store": FaultProxy(store.host, store.port or 5432, slow_seconds=1.3),
            "prefect": FaultProxy(api.host, api.port, slow_seconds=2.5)}
    kubeconfig = test_config.parent / "matrix.kubeconfig"
    kubeconfig.write_text(sandbox.kubeconfig_text().replace(f":{kube_port}", f":{made['kubernetes'].port}"))
    saved = dict(os.environ)
    os.environ.update(
        RUNBOOKS_MATRIX_GITHUB_URL=f"http://127.0.0.1:{made['github'].port}/github",
        RUNBOOKS_SECRET_MATRIX_SLACK_URL=f"http://127.0.0.1:{made['slack'].port}{SLACK_PATH}",
        RUNBOOKS_MATRIX_KUBECONFIG=str(kubeconfig), RUNBOOKS_DATABASE_TIMEOUT="1",
        RUNBOOKS_DATABASE_URL=database_url.replace(f"{store.host}:{store.port or 5432}",
                                                   f"127.0.0.1:{made['store'].port}"))
    yield made
    os.environ.clear()
    os.environ.update(saved)
    for proxy in made.values():
        proxy.close()


class OpenWatch:
    """Stands in for open_incident in the lifecycle, to know when the incident is open."""

    def __init__(self, task):
        self.task, self.future = task, None

    def submit(self, *args, **kwargs):
        self.future = self.task.submit(*args, **kwargs)
        return self.future


def _service(dependency: str) -> str:
    """GitHub's cells use api, whose rollback is a GitHub workflow; the others use frontend,
    rolled back through the Kubernetes API (kubectl's undo), which is quicker."""
    return "api" if dependency == "github" else "frontend"


def _image(world, service: str) -> str:
    return world.cluster.get("deployments", "sandbox", service)["spec"]["template"]["spec"]["containers"][0]["image"]


def _revision(world, service: str) -> int:
    return int(world.cluster.get("deployments", "sandbox", service)["metadata"]["annotations"][
        "deployment.kubernetes.io/revision"])


def _break(world, service: str) -> str:
    """A bad deploy of `service`; returns the image a rollback must bring back."""
    if service == "api":
        good = _image(world, "api")
        break_api(world)
        return good
    good = _image(world, service)
    kubectl(world, "set", "image", f"deployment/{service}", f"{service}={good.rsplit(':', 1)[0]}:v9-broken")
    deadline = time.monotonic() + 10
    while world.cluster.ready_pods("sandbox", service) and time.monotonic() < deadline:
        time.sleep(0.05)
    return good


def _cell(world, proxies, monkeypatch, dependency: str, mode: str, phase: str) -> dict[str, Any]:
    """One run of service-down with the fault on during `phase`."""
    import tasks.lifecycle as lifecycle
    from flows.service_down import SERVICE_DOWN
    from tasks.context import RunContext

    switch = Switch(world, proxies)
    opener = OpenWatch(lifecycle.open_incident)
    monkeypatch.setattr(lifecycle, "open_incident", opener)

    def diagnose(ctx):
        opener.future.wait(30)
        if phase == "open":
            switch.off()
        if phase == "diagnose":
            switch.on(dependency, mode)
        try:
            return SERVICE_DOWN.diagnose(ctx)
        finally:
            if phase == "diagnose":
                switch.off()

    def verify(ctx, findings, plan):
        if phase == "verify":
            switch.on(dependency, mode)  # stays on through the close; off when the run ends
        return SERVICE_DOWN.verify(ctx, findings, plan)

    execute = lifecycle.execute

    def act(ctx, plan, grant):
        if phase == "act":
            switch.on(dependency, mode)
        try:
            return execute(ctx, plan, grant)
        finally:
            if phase == "act":
                switch.off()

    monkeypatch.setattr(lifecycle, "execute", act)
    scenario = replace(SERVICE_DOWN, diagnose=diagnose, verify=verify)
    drill_id = f"matrix-{uuid.uuid4().hex[:10]}"
    service = _service(dependency)
    DrillStore().start_drill(drill_id, "bad-deploy", "service-down", "sandbox-matrix", service, "auto", 0, None)
    alert = {"status": "firing", "fingerprint": drill_id, "startsAt": datetime.now(timezone.utc).isoformat(),
             "labels": {"alertname": "ServiceDown", "service": service, "environment": "sandbox-matrix",
                        "drill_id": drill_id}}
    outcome: dict[str, Any] = {}

    def run() -> None:
        from prefect import flow
        from prefect.settings import (PREFECT_API_REQUEST_TIMEOUT, PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES,
                                      temporary_settings)

        @flow(name="service-down", validate_parameters=False)
        def cell() -> dict:
            return lifecycle.run_scenario(scenario, RunContext.load("sandbox-matrix", service), None, False, alert)

        updates = {}
        if dependency == "prefect":
            updates = {PREFECT_API_URL: f"http://127.0.0.1:{proxies['prefect'].port}/api",
                       PREFECT_API_REQUEST_TIMEOUT: 2.0, PREFECT_CLIENT_MAX_RETRIES: 1}
        try:
            with temporary_settings(updates=updates):
                outcome["result"] = cell()
        except BaseException as exc:  # noqa: BLE001 - a failed run is an outcome too
            outcome["error"] = f"{type(exc).__name__}: {exc}"

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


def _judge(world, dependency: str, phase: str, outcome: dict[str, Any], good: str, revision_before: int,
           rollbacks_before: int) -> list[str]:
    """What is wrong with this cell's outcome (an empty list: the cell passes)."""
    problems = []
    if not outcome["ended"]:
        return ["the run did not end within 90 s"]
    result, error = outcome.get("result"), outcome.get("error", "")
    store = IncidentStore()
    found = [i for i in store.list(limit=50, environment="sandbox-matrix") if outcome["drill_id"] in i.dedup_key]
    incident = found[0] if found else None
    service = _service(dependency)
    rollbacks = len([r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]) - rollbacks_before
    if rollbacks > 1:
        problems.append(f"the rollback workflow ran {rollbacks} times")
    if _revision(world, service) > revision_before + 1:  # one undo is one new revision
        problems.append(f"{service} was changed {_revision(world, service) - revision_before} times")
    name = NAMES[dependency]
    if result is None:  # the run failed: it must say what failed
        if name.lower() not in error.lower() and dependency != "prefect":
            problems.append(f"the failure does not name {name}: {error[:200]}")
        if dependency == "prefect" and not error:
            problems.append("no error for a failed run")
    else:
        state = result.get("outcome")
        if dependency in NOTIFIERS or (dependency == "github" and phase != "act") \
                or (dependency == "kubernetes" and phase not in ("diagnose", "act")):
            if state != "resolved":
                problems.append(f"a {name} failure in {phase} stopped the remediation: {state}")
        if state == "remediation_failed":
            if name.lower() not in result.get("error", "").lower():
                problems.append(f"the remediation failure does not name {name}: {result.get('error')}")
            if incident and dependency != "store":
                kinds = [e.kind for e in store.timeline(incident.id)]
                if "escalated" not in kinds:
                    problems.append("the remediation failure was not escalated")
        if state == "resolved" and _image(world, service) != good:
            problems.append("resolved, but the service was not rolled back")
        if state not in ("resolved", "remediation_failed", "not_recovered", "escalated", "no_action"):
            problems.append(f"unexpected outcome {state}")
    if incident is not None:  # the record says what happened, in order
        kinds = [e.kind for e in store.timeline(incident.id)]
        if kinds and kinds[0] != "detected":
            problems.append(f"the timeline starts with {kinds[0]}")
        if result and result.get("outcome") == "resolved" and dependency != "store" and incident.resolved_at is None:
            problems.append("resolved, but the record is not")
        if kinds.count("action") > 1:
            problems.append("the action was recorded twice")
    elif dependency != "store" and not (dependency == "prefect" and phase == "open"):
        problems.append("no incident was recorded")
    return problems


def test_the_fault_matrix(world, proxies, monkeypatch, capsys):
    cells, failures = [], []
    for dependency, modes in MODES.items():
        for mode in modes:
            for phase in PHASES:
                world.reset()
                good = _break(world, _service(dependency))
                revision_before = _revision(world, _service(dependency))
                rollbacks_before = len([r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"])
                with monkeypatch.context() as patch:
                    outcome = _cell(world, proxies, patch, dependency, mode, phase)
                problems = _judge(world, dependency, phase, outcome, good, revision_before, rollbacks_before)
                state = (outcome.get("result") or {}).get("outcome") or outcome.get("error", "")[:60]
                cells.append((dependency, mode, phase, not problems, state, outcome["seconds"]))
                if problems:
                    failures.append((dependency, mode, phase, problems))
    with capsys.disabled():
        print(f"\nfault matrix: {sum(c[3] for c in cells)}/{len(cells)} cells passed "
              f"({sum(c[5] for c in cells):.0f} s)")
        for dependency, modes in MODES.items():
            for mode in modes:
                row = [c for c in cells if c[0] == dependency and c[1] == mode]
                print(f"  {dependency:<11} {mode:<9} " + "  ".join(
                    f"{c[2]}:{'ok' if c[3] else 'FAIL'} {c[4][:18]} {c[5]:.1f}s" for c in row))
    assert not failures, failures
