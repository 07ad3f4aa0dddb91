"""The product watching itself, in the unit tier: a run's lifecycle tells every transition as a
Prefect event with the incident's resources, its counts move as the run goes, the worker's own
figures classify exits, and docs/observability.md names every event and metric served."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from deployments.intake_metrics import IntakeMetrics
from deployments.worker_metrics import WorkerStats, exit_of
from incidents.models import Outcome
from tasks import telemetry
from tests.test_lifecycle_unit import Person, _context, _run, _scenario, wiring  # noqa: F401 - the fixture

DOCS = Path(__file__).resolve().parent.parent / "docs" / "observability.md"


def _value(metric: Any, sample: str, **labels: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def emitted(monkeypatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(telemetry, "emit_event", lambda event, **kw: seen.append({"event": event, **kw}))
    return seen


def test_a_run_tells_each_transition_as_an_event_with_its_resources(wiring, emitted):  # noqa: F811
    started = _value(telemetry.RUNS_STARTED, "runbooks_runs_started_total", scenario="high-error-rate")
    resolved = _value(telemetry.RUNS_FINISHED, "runbooks_runs_finished_total", scenario="high-error-rate",
                      outcome="resolved")
    scaled = _value(telemetry.ACTIONS, "runbooks_actions_total", kind="scale", result="succeeded")
    approved = _value(telemetry.APPROVALS_DECIDED, "runbooks_approvals_decided_total", decision="approved")
    planned = _value(telemetry.TIME_TO_PLAN, "runbooks_time_to_plan_seconds_count", scenario="high-error-rate")
    acted = _value(telemetry.APPROVE_TO_ACTION, "runbooks_approve_to_action_seconds_count", kind="scale")

    result = _run(_scenario(Person({"approve": True, "approver": "sam", "reason": "go"})), _context(wiring))

    assert result.outcome == Outcome.RESOLVED
    names = [e["event"] for e in emitted]
    assert names == ["runbooks.incident.opened", "runbooks.approval.requested", "runbooks.approval.decided",
                     "runbooks.action.started", "runbooks.action.succeeded", "runbooks.incident.resolved"], names
    for event in emitted:
        resource = event["resource"]
        assert resource["runbooks.incident"] == str(result.incident_id)
        assert (resource["runbooks.service"], resource["runbooks.environment"]) == ("api", "sandbox")
        assert resource["runbooks.severity"] == "P1" and resource["runbooks.scenario"] == "high-error-rate"
        roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
        assert roles["incident"] == f"runbooks.incident.{result.incident_id}"
        assert roles["service"] == "runbooks.service.sandbox.api" and roles["severity"] == "runbooks.severity.P1"
    decided = emitted[2]["resource"]
    assert decided["runbooks.decision"] == "approved" and decided["runbooks.actor"].startswith("sam")
    assert emitted[4]["resource"]["runbooks.action"] == "scale"

    assert _value(telemetry.RUNS_STARTED, "runbooks_runs_started_total", scenario="high-error-rate") == started + 1
    assert _value(telemetry.RUNS_FINISHED, "runbooks_runs_finished_total", scenario="high-error-rate",
                  outcome="resolved") == resolved + 1
    assert _value(telemetry.ACTIONS, "runbooks_actions_total", kind="scale", result="succeeded") == scaled + 1
    assert _value(telemetry.APPROVALS_DECIDED, "runbooks_approvals_decided_total", decision="approved") == approved + 1
    assert _value(telemetry.TIME_TO_PLAN, "runbooks_time_to_plan_seconds_count",
                  scenario="high-error-rate") == planned + 1
    assert _value(telemetry.APPROVE_TO_ACTION, "runbooks_approve_to_action_seconds_count", kind="scale") == acted + 1


def test_an_events_client_that_fails_never_stops_the_run(wiring, monkeypatch):  # noqa: F811
    def broken(event: str, **kw: Any) -> None:
        raise ConnectionError("events websocket closed")

    monkeypatch.setattr(telemetry, "emit_event", broken)
    result = _run(_scenario(Person({"approve": True, "approver": "sam", "reason": "go"})), _context(wiring))
    assert result.outcome == Outcome.RESOLVED


def test_a_failed_delivery_is_counted_by_its_channel():
    before = {c: _value(telemetry.NOTIFICATIONS_FAILED, "runbooks_notifications_failed_total", channel=c)
              for c in ("slack", "pagerduty", "github", "other")}
    for message in ("Slack: INITIAL ALERT not delivered: 500", "PagerDuty trigger to sre not delivered: timeout",
                    "GitHub comment on #4 not added: 502", "issue not closed: 404", "carrier pigeon lost"):
        telemetry.notification_failed(message)
    after = {c: _value(telemetry.NOTIFICATIONS_FAILED, "runbooks_notifications_failed_total", channel=c)
             for c in before}
    assert {c: after[c] - before[c] for c in before} == {"slack": 1, "pagerduty": 1, "github": 2, "other": 1}


def test_the_worker_counts_exits_and_runs_in_flight():
    stats = WorkerStats()
    for _ in range(4):
        stats.run_started()
    for code in (0, 1, -9):
        stats.run_ended(code)
    stats.run_skipped()
    assert (exit_of(0), exit_of(2), exit_of(-15), exit_of(None)) == ("ok", "error", "killed", "error")
    assert stats.exits == {"ok": 1, "error": 1, "killed": 1} and stats.in_flight == 0
    registry = CollectorRegistry()
    registry.register(stats)
    assert registry.get_sample_value("runbooks_worker_runs_total", {"exit": "killed"}) == 1
    assert registry.get_sample_value("runbooks_worker_last_poll_timestamp_seconds") == 0
    stats.polled()
    assert registry.get_sample_value("runbooks_worker_last_poll_timestamp_seconds") > 0


def _served_names() -> set[str]:
    names = {m._name for m in telemetry.RUN_METRICS}
    intake = IntakeMetrics(waiting=lambda: [])
    names |= {f.name for f in intake.registry.collect() if f.name.startswith("runbooks_")}
    names |= {f.name for f in WorkerStats().collect()}
    return names


def test_the_docs_name_every_event_and_metric_served():
    text = DOCS.read_text()
    documented = set(re.findall(r"`(runbooks[._][a-z_.|]+)", text))
    for event in telemetry.EVENT_NAMES:
        assert f"`{event}`" in text, f"{event} is emitted but not in docs/observability.md"
    for name in _served_names():
        assert any(d == name or d.startswith(name + "{") or d == name + "_total" for d in documented) or \
            f"`{name}" in text, f"{name} is served but not in docs/observability.md"
