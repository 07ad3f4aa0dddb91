"""The fake store is held to the real one's contract. Every method the fake offers exists on the
real store with the same signature (unit tier), and the rules a run relies on (one open incident
per key, each decision and each signature once, one lease holder, an action claimed once...) are
run against both: the fake in memory and the real one on PostgreSQL. A rule that drifts in
either fails here, not in a test that happened to use the fake."""

from __future__ import annotations

import inspect
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from incidents import timeline_payloads as payloads
from incidents.alerts import AlertParameter
from incidents.check_facts import ROLLOUT
from incidents.findings import unavailable
from incidents.followups import RunbookStore
from incidents.models import EventKind, Severity, Status
from incidents.plans import Plan
from incidents.store import RecordNotFound
from incidents.store_protocol import Records
from incidents.vocabulary import ActionKind, DetectedBy
from tests.fake_store import FakeStore

TEST_HELPERS = {"kinds"}  # the fake's own reading aids, for tests


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(member) for name, member in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


def test_every_method_of_the_fake_is_the_real_store_s_with_the_same_signature_and_covers_the_protocol():
    fake, real = _public(FakeStore), _public(RunbookStore)
    missing = sorted(set(fake) - set(real) - TEST_HELPERS)
    assert not missing, f"the fake offers what the real store does not: {missing}"
    drifted = {name: (str(fake[name]), str(real[name])) for name in set(fake) & set(real) if fake[name] != real[name]}
    assert not drifted, f"signatures drifted (fake, real): {drifted}"
    asked = _public(Records)
    assert not sorted(set(asked) - set(fake)), f"the fake lacks what a run may ask: {sorted(set(asked) - set(fake))}"
    spelled = {name: str(sig).replace("builtins.list", "list") for name, sig in asked.items()}
    assert spelled == {name: str(real[name]).replace("builtins.list", "list") for name in asked}, (
        "the protocol a run is handed drifted from the real store")


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.services)])
def either(request: pytest.FixtureRequest) -> FakeStore | RunbookStore:
    if request.param == "fake":
        return FakeStore()
    return RunbookStore(request.getfixturevalue("database_url"))


def _unique(name: str) -> str:
    """The real store's database lives for the session: each test uses names of its own."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _open(store, key: str | None = None, **extra):
    fields = dict(dedup_key=key or _unique("contract"), scenario="service-down", service="api", environment="sandbox",
                  severity=Severity.P1, title="[P1] api is down", detected_by=DetectedBy.ALERT, flow_run_id=None,
                  alert=None)
    return store.open_incident(**{**fields, **extra})


def test_one_open_incident_per_key_and_a_closed_one_takes_no_more(either):
    key = _unique("sandbox/api/ServiceDown")
    first = _open(either, key)
    again = _open(either, key)
    assert first.created and not again.created and again.id == first.id
    assert either.get(first.id).detected_by is DetectedBy.ALERT and either.get(first.id).status is Status.INVESTIGATING
    assert either.close(first.id, "bad release", "rolled back") and not either.close(first.id, "x", "y")
    after = _open(either, key)
    assert after.created and after.id != first.id
    still_open = [i.id for i in either.list(open_only=True, environment="sandbox")]
    assert after.id in still_open and first.id not in still_open


def test_the_alert_that_opened_an_incident_reads_back_as_the_alert(either):
    alert = AlertParameter.model_validate({"status": "firing", "fingerprint": "f1", "startsAt": "2026-11-28T03:00:00Z",
                                           "labels": {"alertname": "ServiceDown", "drill_id": "d-1"},
                                           "annotations": {"summary": "api is down"}, "custom": "kept"})
    incident = either.get(_open(either, alert=alert).id)
    assert isinstance(incident.alert, AlertParameter) and incident.alert.as_dict() == alert.as_dict()
    assert incident.alert.name == "ServiceDown" and incident.alert.drill_id == "d-1"
    assert either.get(_open(either).id).alert is None


def test_an_unknown_incident_is_not_found_and_that_is_not_worth_retrying(either):
    with pytest.raises(RecordNotFound) as caught:
        either.get(987654)
    assert not caught.value.transient


def test_a_start_in_the_future_is_the_opening_and_severity_only_rises_by_raise(either):
    incident = _open(either, started_at=datetime.now(timezone.utc) + timedelta(hours=1))
    assert incident.started_at is not None and incident.started_at <= datetime.now(timezone.utc)
    assert either.raise_severity(incident.id, Severity.P2) is None  # P2 is not more severe than P1
    assert either.raise_severity(incident.id, Severity.P0) == Severity.P1
    assert either.get(incident.id).title.startswith("[P0]")
    assert either.set_severity(incident.id, Severity.P0) is None and either.set_severity(incident.id, Severity.P2)


def test_the_timeline_keeps_order_and_its_payloads_and_refuses_an_unknown_kind_or_another_kinds_payload(either):
    incident = _open(either)
    escalation = payloads.Escalation(contacts=["@ic"], paged=[], severity=Severity.P1)
    either.add_event(incident.id, "runbook", EventKind.ESCALATED, "first", escalation)
    either.add_event(incident.id, "sam", EventKind.NOTE, "second")
    with pytest.raises(ValueError):
        either.add_event(incident.id, "sam", "made_up", "third")
    with pytest.raises(payloads.WrongPayload, match="a note entry takes NoData, not Escalation"):
        either.add_event(incident.id, "sam", EventKind.NOTE, "fourth", escalation)
    events = either.timeline(incident.id)
    assert [(e.kind, e.message, e.data) for e in events] == [(EventKind.ESCALATED, "first", escalation),
                                                            (EventKind.NOTE, "second", payloads.NoData())]
    assert events[0].data.rung() == [] and events[0].data.severity is Severity.P1


def test_announcement_thread_pager_and_duty_are_each_claimed_once(either):
    incident = _open(either)
    assert either.claim_announcement(incident.id) and not either.claim_announcement(incident.id)
    assert either.start_slack_thread(incident.id, "C1", "1.1", "1.1")
    assert not either.start_slack_thread(incident.id, "C1", "2.2", "2.2")
    assert not either.set_slack_parent(incident.id, "9.9", "3.3") and either.set_slack_parent(incident.id, "1.1", "3.3")
    assert either.slack_thread(incident.id).parent == "3.3"
    assert either.add_pager(incident.id, "PD1") and not either.add_pager(incident.id, "PD1")
    assert either.pagers(incident.id) == ["PD1"]
    assert either.claim_duty(incident.id, "summary_24h") and not either.claim_duty(incident.id, "summary_24h")
    assert either.complete_duty(incident.id, "summary_24h", "cara")
    assert not either.complete_duty(incident.id, "summary_24h", "cara")
    assert either.duty(incident.id, "summary_24h").done_by == "cara"
    assert either.assign_role(incident.id, "commander", "U1", "sam") is None
    assert either.assign_role(incident.id, "commander", "U2", "sam") == "U1"
    assert either.assigned_roles(incident.id) == {"commander": "U2"}


def test_a_decision_is_taken_once_and_a_signature_once_per_approver(either):
    incident = _open(either)
    run = _unique("run")
    plan = Plan(incident.id, "api", "sandbox", (), summary="roll back")
    seen = {ROLLOUT: unavailable(ROLLOUT, "Kubernetes API timed out")}
    approval_id = either.request_approval(incident.id, plan, run, findings=seen)
    assert either.approval(approval_id).findings == seen  # what a resume reads
    assert either.approval_for_run(run).id == approval_id
    asked = either.approval(approval_id)
    assert asked.environment == "sandbox" and asked.plan == plan and asked.plan_digest == plan.digest
    assert either.sign(approval_id, "sam", "approve", "ok") and not either.sign(approval_id, "sam", "approve", "ok")
    assert either.unsign(approval_id, "sam") and not either.unsign(approval_id, "sam")
    assert either.signatures(approval_id) == []
    either.decide_approval(approval_id, "approved", "sam", "ok")
    either.decide_approval(approval_id, "declined", "dana", "no")  # too late: the first decision stands
    decided = either.approval(approval_id)
    assert (decided.decision, decided.approver) == ("approved", "sam")
    assert either.get(incident.id).acknowledged_by == "sam"
    assert not either.withdraw_approval(approval_id, "watch", "quiet")
    assert either.next_attempt(approval_id) == 1 and either.next_attempt(approval_id) == 2


def test_an_action_is_claimed_once_and_its_repeats_counted(either):
    incident = _open(either)
    first = either.begin_action("plan", "act", incident.id, ActionKind.SCALE)
    repeat = either.begin_action("plan", "act", incident.id, ActionKind.SCALE)
    assert first.first and not repeat.first and repeat.attempts == 2 and repeat.status == "started"
    either.mark_acting(incident.id, "plan", "act")
    either.finish_action(incident.id, "plan", "act", "done", "scaled 0 -> 2")
    (logged,) = either.action_log(incident.id)
    assert (logged.kind, logged.status, logged.detail) == (ActionKind.SCALE, "done", "scaled 0 -> 2")
    assert logged.acting_at is not None
    other = _open(either, service="web")
    assert either.begin_action("plan", "act", other.id, ActionKind.SCALE).first  # another incident: a new action


def test_one_lease_holder_until_it_gives_back_or_is_gone(either):
    target, run1, run2, run3 = _unique("sandbox/api"), _unique("run"), _unique("run"), _unique("run")
    mine = either.take_lease(target, run1, 1, "service-down", lambda run: False)
    theirs = either.take_lease(target, run2, 2, "high-error-rate", lambda run: False)
    assert mine.flow_run_id == theirs.flow_run_id == run1
    assert not either.release_lease(target, run2) and either.release_lease(target, run1)
    assert either.take_lease(target, run2, 2, "high-error-rate", lambda run: False).flow_run_id == run2
    taken = either.take_lease(target, run3, 3, "service-down", lambda run: run == run2)
    assert taken.flow_run_id == run3  # the holder's run is gone: the lease passes on


def test_the_latest_cancel_request_for_a_run_stands(either):
    run = _unique("run")
    assert either.cancel_request(run) is None
    either.request_cancel(run, "sam", "taking over")
    either.request_cancel(run, "dana", "")
    request = either.cancel_request(run)
    assert (request.requested_by, request.reason) == ("dana", "")


def test_a_withdrawn_cancel_request_leaves_the_one_before_it(either):
    run = _unique("run")
    either.request_cancel(run, "sam", "taking over")
    refused = either.request_cancel(run, "dana", "")  # Prefect refused dana's Cancel
    either.withdraw_cancel(refused)
    assert either.cancel_request(run).requested_by == "sam"
    either.withdraw_cancel(either.request_cancel(_unique("run"), "lee", ""))
    assert either.cancel_request(run).requested_by == "sam"  # withdrawing another run's leaves this one


def test_a_dry_run_is_recorded_closed_and_counted_nowhere(either):
    dry = either.record_dry_run("service-down", "api", "sandbox", Severity.P1, "[P1] api dry run", "run-5")
    assert dry.detected_by is DetectedBy.DRY_RUN and dry.resolved_at is not None and dry.status is Status.RESOLVED
    assert dry.id not in [i.id for i in either.list(open_only=True)]


def test_a_run_finds_the_incident_it_opened_joined_or_asked_an_approval_for(either):
    opener, joiner, asker = _unique("run"), _unique("run"), _unique("run")
    assert either.incident_for_run(opener) is None
    incident = _open(either, flow_run_id=opener)
    assert either.incident_for_run(opener).id == incident.id
    joined = payloads.AlertJoined(seen="new", flow_run_id=joiner)
    either.add_event(incident.id, "runbook", EventKind.JOINED, "joined", joined)
    assert either.incident_for_run(joiner).id == incident.id
    other = _open(either)
    either.request_approval(other.id, Plan(other.id, "api", "sandbox", (), summary="restart"), asker)
    assert either.incident_for_run(asker).id == other.id


def test_escalation_moves_one_level_at_a_time_until_someone_acknowledges(either):
    incident = _open(either)
    assert either.escalate_to(incident.id, 0, 1) and not either.escalate_to(incident.id, 0, 1)  # another sweep
    assert either.get(incident.id).escalation_level == 1
    assert either.acknowledge(incident.id, "dana") and not either.acknowledge(incident.id, "sam")
    assert either.get(incident.id).acknowledged_by == "dana"
    assert not either.escalate_to(incident.id, 1, 2)  # acknowledged: escalation stops
    closed = _open(either)
    either.close(closed.id, "x", "y")
    assert not either.acknowledge(closed.id, "dana") and not either.escalate_to(closed.id, 0, 1)


def test_a_credential_in_what_a_person_wrote_never_reaches_the_timeline(either):
    """Reasons reach the store straight from the CLI and the web services (a Cancel, an answer, a
    command): the store redacts the actor, the message, the payload and a Cancel's reason."""
    token, dsn = "ghp_" + "a1B2" * 9, "postgres://app:hunter2-pw@db.internal:5432/app"
    incident, run = _open(either), _unique("run")
    either.add_event(incident.id, "sam", EventKind.RESOLVED, f"rolled back; used {token}",
                     payloads.Resolution(root_cause=f"the release read {dsn}"))
    either.request_cancel(run, "nora", f"taking over with {token}")
    [event] = either.timeline(incident.id)
    said = f"{event.actor} {event.message} {event.data.as_data()} {either.cancel_request(run).reason}"
    assert token not in said and "hunter2-pw" not in said and said.count("[REDACTED]") == 3, said
    assert "postgres://app:[REDACTED]@db.internal:5432/app" in said  # the rest kept for the reader
