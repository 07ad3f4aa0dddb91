"""An approver's answer that arrives before the run has paused for its request (the request's
message goes out a moment before the run pauses) is handed over once the run pauses: found by
the failover benchmark, where a Slack press in that moment was taken for "another request
resumed it", the message lost its buttons and the run waited for ever."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import httpx
import pytest

import deployments.approval_page as page
from deployments.approval_page import AnswerRefused, record_answer
from incidents.config import PROJECT_ROOT, load_environment
from incidents.models import Severity, pause_key
from incidents.plans import Plan
from incidents.vocabulary import DetectedBy
from tests.fake_store import FakeStore

RUN = "7f7416ed-6a58-4161-bfae-99cc24c50945"
PLAN = Plan(1, "api", "sandbox", ())  # incident 1: the first a fresh fake store opens
DIGEST = PLAN.digest


class Run:
    """Prefect's view of one run: Running until it has been read `pauses_after` times, then
    Suspended for its approval request. A Resume is accepted only while it is paused, and
    Prefect then keeps the answer under the pause's keyset, as its resume endpoint does."""

    def __init__(self, pauses_after: int | None) -> None:
        self.reads, self.pauses_after = 0, pauses_after
        self.state = "PAUSED" if pauses_after == 0 else "RUNNING"
        self.inputs: dict[str, Any] = {}
        self.resumes: list[str] = []  # the state each Resume met

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        self.reads += 1
        if self.state == "RUNNING" and self.pauses_after is not None and self.reads > self.pauses_after \
                and not self.inputs:  # it pauses once for the request; once answered it runs on
            self.state = "PAUSED"
        return {"id": flow_run_id, "state": {"type": self.state}}

    def resume(self, flow_run_id: str, run_input: dict[str, Any]) -> httpx.Response:
        self.resumes.append(self.state)
        if self.state != "PAUSED":
            return httpx.Response(200, json={"status": "REJECT",
                                             "details": {"reason": "Cannot resume a run that is not paused."}})
        self.state = "SCHEDULED"
        self.inputs[f"suspended-{pause_key(DIGEST, 0)}-response"] = run_input
        return httpx.Response(200, json={"status": "ACCEPT"})

    def call(self, method: str, path: str, *, ok: tuple[int, ...] = (), **kwargs: Any) -> httpx.Response:
        assert method == "GET" and path.startswith(f"/flow_runs/{RUN}/input/")
        key = path.rsplit("/", 1)[1]
        return httpx.Response(200, json=self.inputs[key]) if key in self.inputs else httpx.Response(404)


@pytest.fixture
def fake(monkeypatch):
    fake = FakeStore()
    monkeypatch.setattr(page, "_store", lambda: fake)
    monkeypatch.setattr(page, "PAUSE_POLL_SECONDS", 0.01)
    return fake


def _approval(store: FakeStore):
    incident = store.open_incident(dedup_key="api", scenario="service-down", service="api", environment="sandbox",
                                   severity=Severity.P2, title="api is down", detected_by=DetectedBy.ALERT,
                                   flow_run_id=RUN, alert=None)
    assert incident.id == PLAN.incident_id
    approval_id = store.request_approval(incident.id, PLAN, RUN)
    return replace(store.approval(approval_id), environment="sandbox", severity="P2")  # as the store joins them


def _config():
    return load_environment("sandbox", PROJECT_ROOT / "config" / "sandbox.yaml")


def test_an_answer_before_the_pause_is_handed_over_once_the_run_pauses(fake):
    approval, run = _approval(fake), Run(pauses_after=3)
    answer = record_answer(approval, _config(), "sam", "approve", "ok", run, via="Slack")
    assert answer.status == 200 and "the run continues" in answer.message
    assert run.resumes[0] == "RUNNING" and run.resumes[-1] == "PAUSED" and run.state == "SCHEDULED"
    assert [s.approver for s in fake.signatures(approval.id)] == ["sam"]


def test_an_answer_the_run_never_pauses_for_is_taken_back_and_the_person_answers_again(fake, monkeypatch):
    monkeypatch.setattr(page, "PAUSE_WAIT_SECONDS", 0.1)
    approval, run = _approval(fake), Run(pauses_after=None)
    with pytest.raises(AnswerRefused) as refused:
        record_answer(approval, _config(), "sam", "approve", "ok", run, via="Slack")
    assert refused.value.status == 503 and "answer again" in str(refused.value)
    assert fake.signatures(approval.id) == []  # taken back: the same answer may be given again
    assert run.state == "RUNNING"


def test_a_repeat_after_another_request_resumed_the_run_changes_nothing_and_does_not_wait(fake, monkeypatch):
    monkeypatch.setattr(page, "PAUSE_WAIT_SECONDS", 30.0)  # waiting here would show as a slow test
    approval, run = _approval(fake), Run(pauses_after=0)
    assert record_answer(approval, _config(), "sam", "approve", "ok", run, via="Slack").status == 200
    run.state = "RUNNING"  # resumed with sam's answer, and going on
    again = record_answer(approval, _config(), "sam", "approve", "ok", run, via="Slack")
    assert again.status == 200 and again.repeat and "has resumed" in again.message
    assert run.resumes == ["PAUSED", "RUNNING"]  # one attempt, no wait for a pause that is over
    assert [s.approver for s in fake.signatures(approval.id)] == ["sam"]
