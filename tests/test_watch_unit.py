"""The incident watch's entry points (tasks/watch.py) reach the store and the clients through
a wiring, as a run does: here the in-memory fakes of tests/fakes.py. The same paths against
the sandbox and PostgreSQL are in tests/test_lifecycle.py and tests/test_cli.py."""

from __future__ import annotations

import pytest

from incidents.models import EventKind, Severity
from incidents.vocabulary import DetectedBy
from tasks.steps import inline_steps
from tasks.watch import acknowledge
from tests.fakes import FakeWiring
from tests.test_lifecycle_unit import SECRETS


@pytest.fixture
def wiring(monkeypatch) -> FakeWiring:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return FakeWiring.of_services()


def _open(wiring: FakeWiring, severity: Severity = Severity.P1) -> int:
    opened = wiring.store_.open_incident(
        dedup_key="sandbox/api/ServiceDown", scenario="service-down", service="api", environment="sandbox",
        severity=severity, title=f"[{severity.value}] api is down", detected_by=DetectedBy.ALERT, flow_run_id=None,
        alert=None)
    return opened.id


def test_an_acknowledgment_stops_escalation_and_is_told_where_the_incident_is(wiring):
    incident_id = _open(wiring)
    with inline_steps():
        assert acknowledge("sandbox", incident_id, " dana ", wiring)
        assert not acknowledge("sandbox", incident_id, "sam", wiring)  # once
    store = wiring.store_
    assert store.get(incident_id).acknowledged_by == "dana"
    events = [(e.kind, e.actor) for e in store.timeline(incident_id)]
    assert events.count((EventKind.ACKNOWLEDGED, "dana")) == 1
    assert any("Acknowledged by dana" in m["text"] for m in wiring.slack_.messages), wiring.slack_.messages
    with inline_steps(), pytest.raises(ValueError, match="belongs to environment 'sandbox', not 'production'"):
        acknowledge("production", incident_id, "dana", wiring)



def test_a_cancelled_run_is_told_only_what_it_did_not_a_run_that_took_over(wiring):
    """Two runs plan the same rollback for one incident; the first is cancelled while it waits,
    the second is approved and acts. The first's Cancel, noted after the second acted (the watch
    notes a waiting run's Cancel on its next sweep), says it changed nothing."""
    from types import SimpleNamespace

    from incidents.plans import Plan
    from tasks.cancellation import note_cancellation
    from tests.action_samples import sample_action

    store = wiring.store_
    incident_id = _open(wiring)
    plan = Plan(incident_id, "api", "sandbox", (sample_action("scale"),), summary="scale up")
    store.request_approval(incident_id, plan, "run-cancelled")
    taken_over = store.request_approval(incident_id, plan, "run-approved")
    store.decide_approval(taken_over, "approved", "sam", "go")
    action = plan.actions[0]
    store.begin_action(plan.digest, action.digest, incident_id, action.kind)
    store.finish_action(incident_id, plan.digest, action.digest, "done", "3 -> 6 replicas")
    with inline_steps():
        note_cancellation(SimpleNamespace(id="run-cancelled", name="first-run", parameters={}), "", wiring)
        note_cancellation(SimpleNamespace(id="run-approved", name="second-run", parameters={}), "", wiring)
    notes = [e.message for e in store.timeline(incident_id) if e.kind == EventKind.CANCELLED]
    assert "first-run" in notes[0] and "Done before the Cancel: nothing was changed" in notes[0], notes
    assert "second-run" in notes[1] and "scale (done: 3 -> 6 replicas)" in notes[1], notes


def test_a_containment_whose_record_no_longer_reads_back_is_asked_about_and_lifted_by_a_person(wiring):
    """A block recorded by an older version whose params this version cannot read: the watch
    asks a person once it expires (it cannot undo what it cannot read), and the person's lift
    closes it, saying nothing was undone here."""
    from datetime import datetime, timedelta, timezone

    from incidents.containment import StandingContainment
    from incidents.vocabulary import ActionKind
    from tasks.containment import lift, review_containments
    from tasks.context import Scope

    incident_id = _open(wiring, Severity.P0)
    now = datetime.now(timezone.utc)
    standing = StandingContainment(9, incident_id, "sandbox", "api", ActionKind.BLOCK_IPS,
                                   "networkpolicy/block-suspicious-ips (namespace sandbox)",
                                   {"strategy": "a strategy this version no longer has"},  # type: ignore[arg-type]
                                   now - timedelta(hours=25), now - timedelta(hours=1), "active")
    wiring.store_.standing[standing.id] = standing
    with inline_steps():
        assert review_containments(Scope.load("sandbox", wiring), now).asked == [9]
        lift("sandbox", 9, "sam", "undone by hand with kubectl", wiring=wiring)
    lifted = wiring.store_.containment(9)
    assert lifted is not None and not lifted.active and lifted.lifted_by == "sam"
    assert "nothing was undone here" in (lifted.note or "")
    assert not [c for c in wiring.kube.calls if "block" in c or "denylist" in c], wiring.kube.calls
    told = [m["text"] for m in wiring.slack_.messages if "CONTAINMENT" in m["text"]]
    assert any("do not read back" in t for t in told), told
