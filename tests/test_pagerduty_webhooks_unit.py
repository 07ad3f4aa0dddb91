"""A PagerDuty v3 webhook delivery read at the intake's door (deployments/pagerduty_webhooks.py):
the event is parsed once into what the project reads, and a body that is not one is refused
with its reason before anything is looked up."""

from __future__ import annotations

import json

import pytest

from deployments.pagerduty_webhooks import IncidentData, WebhookEvent, handle_event


def _delivery(**event: object) -> bytes:
    return json.dumps({"event": event}).encode()


def test_an_incident_event_is_read_as_its_type_agent_and_incident_key():
    # the shape of PagerDuty's v3 incident.acknowledged delivery, trimmed; unknown fields are ignored
    event = WebhookEvent.parse(_delivery(
        id="01DEN4HPBQAZ7ZNW1MC1RHQHVT", event_type="incident.acknowledged", resource_type="incident",
        occurred_at="2026-11-28T03:05:00.000Z",
        agent={"html_url": "https://acme.pagerduty.com/users/PLH1HKV", "id": "PLH1HKV", "summary": "Tenley Kinsey",
               "type": "user_reference"},
        data={"id": "PGR0VU2", "type": "incident", "number": 2, "status": "acknowledged",
              "incident_key": "runbooks/sandbox/incident-7", "title": "api down"}))
    assert event.event_type == "incident.acknowledged"
    assert event.agent is not None and event.agent.summary == "Tenley Kinsey"
    assert event.data is not None and event.data.incident_key == "runbooks/sandbox/incident-7"


def test_a_delivery_without_an_event_or_agent_reads_as_empty():
    assert WebhookEvent.parse(b"{}") == WebhookEvent()
    assert WebhookEvent.parse(_delivery(event_type="service.updated", data={"id": "P1"})).data.incident_key is None


@pytest.mark.parametrize("body, why", [
    (b"not json", "not JSON"),
    (b"[1, 2]", "not a webhook event"),
    (_delivery(event_type="incident.acknowledged", data=["a", "list"]), "data"),
    (json.dumps({"event": "a string"}).encode(), "not a webhook event"),
])
def test_a_body_that_is_not_a_webhook_event_is_refused_with_its_reason(body, why):
    with pytest.raises(ValueError, match=why):
        WebhookEvent.parse(body)


@pytest.mark.parametrize("event", [
    WebhookEvent(event_type="incident.triggered", data=IncidentData(incident_key="runbooks/sandbox/incident-7")),
    WebhookEvent(event_type="incident.acknowledged", data=IncidentData(incident_key="someone-elses-key")),
    WebhookEvent(event_type="incident.acknowledged"),
])
def test_events_of_other_types_or_alerts_not_ours_are_ignored_without_a_lookup(event):
    """No store and no config are reached here: the unit tier has neither."""
    assert "ignored" in handle_event(event)
