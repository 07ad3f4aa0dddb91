"""The UI path in a real browser: Debian's Chromium driven by Playwright against the Prefect
UI of a real stack (PostgreSQL-backed server, two workers). A failing test leaves a
screenshot in test-artifacts/."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import BROKEN_IMAGE, api_image, break_api

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture
def page(request):
    if not os.path.exists(CHROMIUM):
        pytest.fail("chromium is not installed: .ci/run installs it (Debian package chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 900})
        tab.set_default_timeout(20_000)
        yield tab
        if getattr(request.node, "failed", False):
            ARTIFACTS.mkdir(exist_ok=True)
            tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        browser.close()


def _start_from_the_ui(page, api: str) -> str:
    ui = api.removesuffix("/api")
    dep = httpx.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    before = {r["id"] for r in httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
        "deployments": {"id": {"any_": [dep["id"]]}}, "sort": "EXPECTED_START_TIME_DESC", "limit": 200}).json()}
    page.goto(f"{ui}/deployments")
    page.get_by_text("service-down", exact=True).first.wait_for()
    page.goto(f"{ui}/deployments/deployment/{dep['id']}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Quick run", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Run", exact=True).click()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        paused = [r for r in httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
            "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "deployments": {"id": {"any_": [dep["id"]]}}}).json()
                  if r["id"] not in before]
        if paused:
            return paused[0]["id"]
        time.sleep(0.5)
    raise AssertionError("the run started from the UI did not pause for approval")


def _answer_in_the_form(page, api: str, run_id: str, approve: bool, approver: str, reason: str) -> None:
    page.goto(f"{api.removesuffix('/api')}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume", exact=True).click()
    form = page.get_by_role("dialog")
    form.get_by_text("Approve remediation for incident").wait_for()
    assert form.get_by_text("rollback", exact=True).is_visible()
    assert "revision 3" in form.inner_text() and "v2-broken" in form.inner_text()
    if approve:
        form.get_by_role("switch").click()
    boxes = form.locator("textarea")
    boxes.nth(0).fill(approver)
    boxes.nth(1).fill(reason)
    form.get_by_role("button", name="Submit", exact=True).click()


def _final(api: str, run_id: str) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]
        if state in ("COMPLETED", "FAILED", "CRASHED"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish")


def test_approve_in_the_browser_heals_the_sandbox(pg_stack, world, page):
    api = pg_stack.api
    break_api(world)
    run_id = _start_from_the_ui(page, api)
    _answer_in_the_form(page, api, run_id, True, "rosa", "approved from the browser")
    assert _final(api, run_id) == "COMPLETED"
    assert api_image(world).endswith(":v1.5.0")
    assert httpx.get(f"{world.url}/services/api/__ok").status_code == 200
    page.reload()
    page.get_by_text("Completed").first.wait_for()


def test_decline_in_the_browser_changes_nothing(pg_stack, world, page):
    api = pg_stack.api
    break_api(world)
    run_id = _start_from_the_ui(page, api)
    _answer_in_the_form(page, api, run_id, False, "sam", "declined from the browser")
    assert _final(api, run_id) == "COMPLETED"
    assert api_image(world) == BROKEN_IMAGE
    assert any("sam" in m["text"] and "ESCALATION" in m["text"] for m in world.slack_messages)


LOAD = 50  # incidents at once, as benchmarks/engine_latency.py runs them


def _load_deployment(api: str, world, test_config, tmp_path, services: list[str]) -> str:
    """`service-down/sandbox-load` on the stack: a config with `services`, each a broken
    sandbox service of its own, read through the deployment's job_variables.env."""
    raw = yaml.safe_load(Path(test_config).read_text())
    env = raw["environments"]["sandbox"]
    api_service = env["services"]["api"]
    env["services"] = {name: {"base_url": api_service["base_url"].replace("/services/api", f"/services/{name}"),
                              "kubernetes": {"namespace": "sandbox", "deployment": name, "container": name},
                              "github": {**api_service["github"], "repo": f"acme/{name}"}}
                       for name in services}
    path = tmp_path / "load.yaml"
    path.write_text(yaml.safe_dump({**raw, "environments": {"sandbox-load": env}, "routing": []}))
    for name in services:
        httpx.post(f"{world.url}/_sandbox/services", json={"name": name}, timeout=5).raise_for_status()
        httpx.post(f"{world.url}/_sandbox/deploy", json={"service": name, "version": "v2-broken"},
                   timeout=5).raise_for_status()
    base = httpx.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    body = {key: base[key] for key in ("flow_id", "entrypoint", "path", "pull_steps", "work_pool_name",
                                       "work_queue_name", "parameter_openapi_schema", "enforce_parameter_schema")}
    body.update(name="sandbox-load", parameters={"service": services[0], "environment": "sandbox-load"},
                job_variables={"env": {"RUNBOOKS_CONFIG": str(path)}})
    response = httpx.post(f"{api}/deployments/", json=body, timeout=5)
    assert response.status_code in (200, 201), response.text
    return response.json()["id"]


def test_run_and_resume_in_the_browser_land_at_once_under_load(pg_stack, world, page, test_config, tmp_path):
    """50 incidents start at once; meanwhile a Run from the deployment page and a Resume in the
    form each land on the first click (the UI does not retry: a 5xx would lose them)."""
    api = pg_stack.api
    services = [f"load-{n:02d}" for n in range(LOAD)]
    deployment = _load_deployment(api, world, test_config, tmp_path, services)
    load = [httpx.post(f"{api}/deployments/{deployment}/create_flow_run", timeout=10, json={
        "parameters": {"service": name, "environment": "sandbox-load"}}).json()["id"] for name in services]
    break_api(world)
    run_id = _start_from_the_ui(page, api)
    busy = sum(httpx.get(f"{api}/flow_runs/{r}", timeout=5).json()["state"]["type"] in ("SCHEDULED", "PENDING", "RUNNING")
               for r in load)
    _answer_in_the_form(page, api, run_id, True, "rosa", "approved under load")
    assert _final(api, run_id) == "COMPLETED"
    assert api_image(world).endswith(":v1.5.0")
    deadline = time.monotonic() + 180
    states: list[str] = []
    while time.monotonic() < deadline:
        states = [httpx.get(f"{api}/flow_runs/{r}", timeout=5).json()["state"]["type"] for r in load]
        if all(s in ("PAUSED", "COMPLETED", "FAILED", "CRASHED") for s in states):
            break
        time.sleep(1)
    assert states.count("PAUSED") == LOAD, f"load runs: {sorted(set(states))}"  # each reached its approval
    for r in load:  # nothing to stop: they are suspended
        httpx.post(f"{api}/flow_runs/{r}/set_state", timeout=5, json={"force": True, "state": {
            "type": "CANCELLED", "name": "Cancelled", "message": "Cancelled by the load test"}})
    print(f"{busy} of {LOAD} load runs were still before their approval when the UI run paused")
