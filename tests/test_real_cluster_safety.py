"""Safe in a real cluster: a rollback names its target, so an answer lost in transit never
rolls back twice, and a second dispatch never flips back to the broken revision."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import GITHUB_TOKEN, FlowThread, api_image, break_api

pytestmark = pytest.mark.usefixtures("prefect_server")
GOOD = "registry.sandbox.local/acme/api:v1.5.0"


def _rollback_runs(world) -> list[dict]:
    return [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]


def test_a_lost_dispatch_answer_causes_no_second_rollback(world):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", severity="P1")
    paused = run.wait_paused()
    # GitHub accepts the dispatch; its answer never arrives (the connection drops)
    httpx.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
                                                     "path": "/dispatches", "count": 1}).raise_for_status()
    assert run.resume(paused.id, approve=True, approver="alice", reason="v2 broke it").status.value == "ACCEPT"
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    assert world.faults._faults["github"].count == 0, "the dispatch's answer was lost"
    assert len(_rollback_runs(world)) == 1, "the lost answer was resolved by finding the run, not by a second POST"
    assert api_image(world) == GOOD


def test_a_second_dispatch_of_the_same_rollback_changes_nothing(world):
    from integrations.github import GitHubClient

    break_api(world)
    inputs = {"environment": "sandbox", "to_revision": "2", "to_image": GOOD}
    with GitHubClient(f"{world.url}/github", GITHUB_TOKEN) as github:
        for _ in range(2):  # e.g. two operators, or a retry after a lost answer
            since = github.dispatch_workflow("acme/api", "rollback.yml", "main", inputs)
            done = github.wait_for_dispatched_run("acme/api", "rollback.yml", since, timeout=30, poll=0.2)
            assert done["conclusion"] == "success"
            deadline = time.monotonic() + 10
            while api_image(world) != GOOD and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api_image(world) == GOOD, "never back to the broken revision"
            time.sleep(1.1)  # the next dispatch is found by its own start second
    assert len(_rollback_runs(world)) == 2
