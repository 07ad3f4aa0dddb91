"""Who approved: the approval page on the intake checks each approver's own credential, only
a POST decides, P0 plans need two different approvers, and a Resume without verified identity
(the Prefect UI records none) is ignored where verification is required."""

from __future__ import annotations

import time

import pytest

from integrations import http
from tests.conftest import APPROVER_CREDENTIALS, BROKEN_IMAGE, FlowThread, api_image, break_api
from tests.test_intake import deployments, live_intake  # noqa: F401 - fixtures

pytestmark = pytest.mark.usefixtures("prefect_server")


def _state(run_id) -> tuple[str, str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    return state.type.value, state.name


def _until(predicate, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def _post(page: str, approver: str, decision: str = "approve", credential: str | None = None, reason: str = "ok"):
    return http.post(page, timeout=15, data={"approver": approver, "decision": decision, "reason": reason,
                                              "credential": APPROVER_CREDENTIALS.get(approver, "x")
                                              if credential is None else credential})


def test_p0_needs_two_verified_approvers_and_ignores_an_unverified_resume(world, store, live_intake):  # noqa: F811
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    page = f"{live_intake}/approvals/{approval.token}"
    notice = next(m["text"] for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED"))
    assert f"/approvals/{approval.token}" in notice and "2 different approvers" in notice

    # Looking never decides: a GET (also one carrying the form's fields, as a prefetching
    # scanner might send) shows the plan and changes nothing.
    for url in (page, page + f"?approver=sam&credential={APPROVER_CREDENTIALS['sam']}&decision=approve"):
        shown = http.get(url, timeout=10)
        assert shown.status_code == 200 and "rollback" in shown.text and "v2-broken" in shown.text
        assert 'method="post"' in shown.text and "Needs 2 different approvers" in shown.text
    assert store.signatures(approval.id) == [] and store.approval(approval.id).decision is None

    # Wrong credential, unknown approver, an approver not allowed for P0: refused, nothing recorded.
    assert _post(page, "sam", credential="guess").status_code == 403
    assert _post(page, "mallory").status_code == 403
    refused = _post(page, "rita")
    assert refused.status_code == 403 and "may not answer P0" in refused.json()["message"]
    assert store.signatures(approval.id) == []
    assert "refused" in " ".join(e.message for e in store.timeline(approval.incident_id))

    # A Resume from the Prefect UI (no identity) is not counted: the run asks again.
    assert run.resume(paused.id, approve=True, approver="mallory", reason="trust me").status.value == "ACCEPT"
    _until(lambda: store.approval(approval.id).attempt == 1 and _state(paused.id)[0] == "PAUSED")
    assert api_image(world) == BROKEN_IMAGE
    assert any(e.kind == "approval_unverified" and "mallory" in e.message
               for e in store.timeline(approval.incident_id))

    first = _post(page, "sam", reason="v2 crash-loops")
    assert first.status_code == 202 and "waiting for 1 more" in first.json()["message"]
    assert _state(paused.id)[0] == "PAUSED" and api_image(world) == BROKEN_IMAGE
    again = _post(page, "sam")  # a double click: already recorded, still one approver
    assert again.status_code == 202 and "different approver" in again.json()["message"]
    assert [s.approver for s in store.signatures(approval.id)] == ["sam"]
    second = _post(page, "tess", reason="agreed")
    assert second.status_code == 200, second.text

    result = run.join(120)
    assert result["outcome"] == "resolved", result
    assert result["decision"]["approver"] == "sam + tess (verified)"
    assert api_image(world).endswith(":v1.5.0")
    decided = store.approval(approval.id)
    assert decided.decision == "approved" and decided.approver == "sam + tess (verified)" and decided.verified
    signed = [(e.actor, e.kind) for e in store.timeline(approval.incident_id) if e.kind == "approval_signed"]
    assert signed == [("sam", "approval_signed"), ("tess", "approval_signed")]
    assert store.get(approval.incident_id).acknowledged_by == "sam + tess (verified)"
    assert http.post(page, timeout=10, data={"approver": "sam"}).status_code == 409  # decided: closed


def test_a_single_verified_approver_suffices_below_p0_and_a_decline_changes_nothing(world, store, live_intake):  # noqa: F811
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified", severity="P1")
    paused = run.wait_paused()
    page = f"{live_intake}/approvals/{store.approval_for_run(str(paused.id)).token}"
    declined = http.post(page, timeout=15, json={"approver": "tess", "credential": APPROVER_CREDENTIALS["tess"],
                                                  "decision": "decline", "reason": "handling it by hand"})
    assert declined.status_code == 200, declined.text
    result = run.join(60)
    assert result["outcome"] == "declined" and result["decision"]["approver"] == "tess (verified)"
    assert api_image(world) == BROKEN_IMAGE


def test_where_the_resume_form_suffices_an_answer_from_the_page_is_still_recorded_as_verified(
        world, store, live_intake):  # noqa: F811
    """The plain sandbox accepts the UI's Resume; an approver who uses the page instead gets the
    verified mark, and a Resume with the same name typed in the form does not."""
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    answered = _post(f"{live_intake}/approvals/{approval.token}", "sam", reason="v2 crash-loops")
    assert answered.status_code == 200, answered.text
    result = run.join(120)
    assert result["outcome"] == "resolved" and result["decision"]["approver"] == "sam (verified)"
    decided = store.approval(approval.id)
    assert decided.approver == "sam (verified)" and decided.verified

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox", severity="P1")
    paused = run.wait_paused()
    assert run.resume(paused.id, approve=True, approver="sam", reason="typed in the UI").status.value == "ACCEPT"
    result = run.join(120)
    assert result["outcome"] == "resolved" and result["decision"]["approver"] == "sam (unverified)"
    assert not store.approval(store.approval_for_run(str(paused.id)).id).verified


def test_the_same_verified_answer_again_after_the_run_resumed_never_takes_a_signature_back(
        world, store, live_intake):  # noqa: F811
    """sam approves (202), tess approves (200, the run resumes), tess's answer arrives again (a
    double click, a resubmitted form, a replayed press) before the run has recorded its
    decision: a success that changes nothing, and both signatures stay."""
    from prefect.settings import PREFECT_API_URL

    from deployments.approval_page import AnswerRefused, record_answer
    from deployments.prefect_api import PrefectApi
    from flows.service_down import service_down
    from incidents.config import load_environment

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified")
    paused = run.wait_paused()
    approval = store.approval(store.approval_for_run(str(paused.id)).id)  # as the page loaded it, undecided
    page = f"{live_intake}/approvals/{approval.token}"
    assert _post(page, "sam").status_code == 202
    assert _post(page, "tess").status_code == 200
    config = load_environment("sandbox-verified")
    for _ in range(2):  # the repeat, arriving while the run goes on (the page's early 409 not yet in force)
        try:
            answer = record_answer(approval, config, "tess", "approve", "ok", PrefectApi(PREFECT_API_URL.value()),
                                   via="approval page")
            assert answer.status in (200, 202) and answer.repeat, answer
        except AnswerRefused as exc:
            assert exc.status == 409 and "no longer waiting" in str(exc), exc
        assert sorted(s.approver for s in store.signatures(approval.id)) == ["sam", "tess"]
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    assert result["decision"]["approver"] == "sam + tess (verified)"
    kinds = [e.kind for e in store.timeline(approval.incident_id)]
    assert "approval_not_delivered" not in kinds and "approval_unverified" not in kinds


def test_the_same_answer_sent_several_times_at_once_counts_once_and_stays(world, store, live_intake):  # noqa: F811
    """A double (or triple) click sends the same verified answer in parallel: whichever request
    recorded the signature, and whichever resumed the run, the signature stays and the run's
    decision is verified (found trying it as a user: the request that had recorded it lost the
    race to resume and took the signature back)."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    page = f"{live_intake}/approvals/{approval.token}"
    with ThreadPoolExecutor(3) as pool:  # a triple click
        answers = list(pool.map(lambda _: _post(page, "sam", reason="v2 crash-loops"), range(3)))
    assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
    result = run.join(120)
    assert result["outcome"] == "resolved" and result["decision"]["approver"] == "sam (verified)", result
    assert [s.approver for s in store.signatures(approval.id)] == ["sam"]
    assert "approval_not_delivered" not in [e.kind for e in store.timeline(approval.incident_id)]
