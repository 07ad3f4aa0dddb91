"""The UI path in a real browser: Debian's Chromium driven by Playwright against the Prefect
UI of a real stack (PostgreSQL-backed server, two workers). A failing test leaves a
screenshot in test-artifacts/."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

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
    before = {r["id"] for r in httpx.post(f"{api}/flow_runs/filter", json={}, timeout=5).json()}
    dep = httpx.get(f"{api}/deployments/name/service-down/sandbox", timeout=5).json()
    page.goto(f"{ui}/deployments")
    page.get_by_text("service-down", exact=True).first.wait_for()
    page.goto(f"{ui}/deployments/deployment/{dep['id']}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Quick run", exact=True).click()
    page.get_by_role("dialog").get_by_role("button", name="Run", exact=True).click()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        paused = [r for r in httpx.post(f"{api}/flow_runs/filter", timeout=5, json={
            "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}}).json() if r["id"] not in before]
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
