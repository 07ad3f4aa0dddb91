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

