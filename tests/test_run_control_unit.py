"""`runbooks cancel` and `/incident cancel` (deployments/run_control.py) against Prefect's
answers as its API gives them (POST /flow_runs/{id}/set_state: an OrchestrationResult), through
an httpx.MockTransport: who asked is recorded for the run's Cancel hook, and withdrawn when
Prefect refuses, so a later Cancel from the UI is not put in that person's name."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from deployments.prefect_api import PrefectApi
from deployments.run_control import CancelRefused, cancel_run
from tests.fake_store import FakeStore

RUN_ID = "0c1d8e4e-5a8b-4d6e-9f0a-2b3c4d5e6f70"


def _run(state_type: str, state_name: str) -> dict[str, object]:
    return {"id": RUN_ID, "name": "brisk-otter", "parameters": {"environment": "sandbox", "service": "api"},
            "state": {"type": state_type, "name": state_name}}


def _sent() -> list[dict[str, Any]]:
    return []


def _prefect(status: str, sent: list[dict[str, Any]]) -> PrefectApi:
    """Prefect's answer to set_state: ACCEPT with the new state, or REJECT/ABORT with its reason."""
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and request.url.path == f"/api/flow_runs/{RUN_ID}/set_state"
        sent.append(json.loads(request.content))
        if status == "ACCEPT":
            return httpx.Response(201, json={"status": "ACCEPT", "state": sent[-1]["state"],
                                             "details": {"type": "accept_details"}})
        return httpx.Response(200, json={"status": status, "state": None, "details": {
            "type": "reject_details" if status == "REJECT" else "abort_details",
            "reason": "This run has already terminated."}})
    return PrefectApi("http://prefect.test/api", transport=httpx.MockTransport(answer))


def test_a_running_run_goes_to_cancelling_in_the_askers_name():
    store, sent = FakeStore(), _sent()
    assert cancel_run(_prefect("ACCEPT", sent), store, _run("RUNNING", "Running"), "nora", "taking over") is False
    assert sent[0]["state"] == {"type": "CANCELLING", "name": "Cancelling", "message": "Cancelled by nora: taking over"}
    assert sent[0]["force"] is False  # a running run is stopped by its worker, through Prefect's rules
    request = store.cancel_request(RUN_ID)
    assert (request.requested_by, request.reason) == ("nora", "taking over")


def test_a_paused_run_is_cancelled_at_once_and_its_service_freed():
    store, sent = FakeStore(), _sent()
    store.take_lease("sandbox/api", RUN_ID, 1, "service-down", lambda run: False)
    assert cancel_run(_prefect("ACCEPT", sent), store, _run("PAUSED", "Suspended"), "sam", "") is True
    assert sent[0]["state"]["type"] == "CANCELLED" and sent[0]["force"] is True
    assert store.leases == {}


@pytest.mark.parametrize("status", ["REJECT", "ABORT"])
def test_a_refused_cancel_is_withdrawn_and_the_one_before_it_stands(status):
    store, sent = FakeStore(), _sent()
    cancel_run(_prefect("ACCEPT", sent), store, _run("RUNNING", "Running"), "nora", "taking over")
    with pytest.raises(CancelRefused, match="already terminated"):
        cancel_run(_prefect(status, sent), store, _run("RUNNING", "Running"), "dana", "mine")
    assert store.cancel_request(RUN_ID).requested_by == "nora"
    fresh = FakeStore()
    with pytest.raises(CancelRefused):
        cancel_run(_prefect(status, sent), fresh, _run("RUNNING", "Running"), "dana", "mine")
    assert fresh.cancel_request(RUN_ID) is None  # a later Cancel from the UI names no one


def test_a_credential_in_the_reason_reaches_neither_prefect_nor_the_store():
    store, sent = FakeStore(), _sent()
    token = "xoxb-" + "1234567890-" * 3 + "abcdefabcdef"
    cancel_run(_prefect("ACCEPT", sent), store, _run("RUNNING", "Running"), "nora", f"pasted {token}")
    assert token not in sent[0]["state"]["message"] and "[REDACTED]" in sent[0]["state"]["message"]
    assert token not in store.cancel_request(RUN_ID).reason
