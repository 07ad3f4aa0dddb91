"""The store's contract, continued (tests/test_store_contract.py): the rules the watch and the
follow-ups rely on, run against the fake in memory and the real store on PostgreSQL. Each test
works in an environment of its own: the real store's database lives for the session."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from incidents.action_params import IngressDenylistBlock
from incidents.alerts import AlertParameter
from incidents.followup_models import Lesson, Scorecard
from incidents.models import Severity
from incidents.plans import Plan
from incidents.store_duties import SUMMARY_24H
from incidents.vocabulary import ActionKind, DetectedBy
from tests import test_store_contract as contract

either = contract.either  # the fixture: each test runs on the fake and on the real store
_open, _unique = contract._open, contract._unique

NOW = datetime.now(timezone.utc)


def _resolved(store, environment: str, needed: bool = True, **extra):
    incident = _open(store, environment=environment, **extra)
    assert store.close(incident.id, "bad release", "rolled back", postmortem_needed=needed)
    return store.get(incident.id)


def test_a_status_update_turn_is_taken_once_per_turn_and_never_after_resolution(either):
    incident = _open(either, environment=_unique("env"))
    opened = either.get(incident.id).last_update_at  # the opening is the first update
    turn, later = NOW + timedelta(minutes=30), NOW + timedelta(minutes=60)
    assert opened is not None and either.claim_status_update(incident.id, opened, turn)
    assert not either.claim_status_update(incident.id, opened, turn), "the turn was already taken"
    assert either.get(incident.id).last_update_at == turn
    assert either.claim_status_update(incident.id, turn, later)
    either.close(incident.id, "x", "y")
    assert not either.claim_status_update(incident.id, later, later + timedelta(minutes=30))


def test_a_postmortem_is_requested_once_completed_once_and_late_ones_are_reminded_at_most_every_interval(either):
    environment = _unique("env")
    incident = _resolved(either, environment)
    assert either.start_postmortem(incident.id, "run-1") and not either.start_postmortem(incident.id, "run-2")
    assert either.postmortem(incident.id).flow_run_id == "run-2"  # a later run asks for the open one again
    soon, due, every = NOW + timedelta(hours=30), timedelta(hours=24), timedelta(hours=4)
    assert [p.incident_id for p in either.overdue_postmortems(environment, NOW, due, every)] == []
    late = either.overdue_postmortems(environment, soon, due, every)
    assert [(p.incident_id, p.postmortem_run) for p in late] == [(incident.id, "run-2")]
    either.postmortem_reminded(incident.id, soon)
    assert either.overdue_postmortems(environment, soon + timedelta(hours=1), due, every) == []
    assert len(either.overdue_postmortems(environment, soon + timedelta(hours=5), due, every)) == 1
    lessons = [Lesson(lesson="pin the image", playbook_change=True, playbook_section="Scenario 1")]
    either.complete_postmortem(incident.id, "kim", "a bad image", lessons, "# Post-mortem", "1,200 users")
    done = either.postmortem(incident.id)
    assert done.completed_by == "kim" and done.lessons == lessons and done.markdown == "# Post-mortem"
    closed = either.get(incident.id)
    assert (closed.root_cause, closed.users_affected) == ("a bad image", "1,200 users")
    assert either.overdue_postmortems(environment, soon + timedelta(hours=9), due, every) == []


def test_no_postmortem_is_chased_for_a_drill_or_an_incident_that_needs_none(either):
    environment = _unique("env")
    drill = AlertParameter.model_validate({"status": "firing", "fingerprint": _unique("f"),
                                           "labels": {"alertname": "ServiceDown", "drill_id": _unique("d")}})
    _resolved(either, environment, alert=drill)
    _resolved(either, environment, needed=False)
    assert either.overdue_postmortems(environment, NOW + timedelta(days=3), timedelta(hours=24),
                                      timedelta(hours=4)) == []


def test_an_action_item_is_filed_once_per_title_and_completed_once(either):
    environment = _unique("env")
    incident = _resolved(either, environment)
    later, sooner = NOW + timedelta(days=7), NOW + timedelta(days=1)
    first = either.add_action_item(incident.id, "pin images", "kim", "1w", later)
    again = either.add_action_item(incident.id, "pin images", "rosa", "24h", sooner)
    other = either.add_action_item(incident.id, "add a canary", None, "24h", sooner)
    assert again.id == first.id and again.owner == "kim"
    either.attach_action_issue(first.id, "acme/api", 42, "https://github.example/acme/api/issues/42")
    listed = either.action_items(environment=environment)
    assert [i.id for i in listed] == [other.id, first.id], "ordered by due date"
    assert listed[1].issue_number == 42 and listed[1].environment == environment and listed[1].service == "api"
    either.complete_action_item(first.id, NOW)
    either.complete_action_item(first.id, later)
    assert either.action_items(incident.id)[1].completed_at == NOW
    assert [i.id for i in either.action_items(environment=environment, open_only=True)] == [other.id]
    either.action_item_reminded(other.id, NOW)
    assert either.action_items(incident.id, open_only=True)[0].last_reminded_at == NOW


def test_a_playbook_proposal_is_kept_once_with_its_incident_s_facts(either):
    environment = _unique("env")
    incident = _resolved(either, environment)
    either.propose(incident.id, "Scenario 1", "check the image tag first")
    either.propose(incident.id, "Scenario 1", "check the image tag first")
    either.propose(incident.id, "Escalation", "page the lead at once")
    proposals = either.proposals(environment)
    assert [(p.section, p.proposal) for p in proposals] == [("Escalation", "page the lead at once"),
                                                           ("Scenario 1", "check the image tag first")]
    assert proposals[0].service == "api" and proposals[0].severity == "P1"
    assert either.proposals(_unique("elsewhere")) == []


def test_a_drill_is_started_finished_with_its_score_and_only_finished_ones_are_history(either):
    running, done = _unique("drill"), _unique("drill")
    either.start_drill(running, "bad-deploy", "service-down", "sandbox", "api", "auto", 0, None)
    either.start_drill(done, "pg-lock", "database-issues", "sandbox", "api", "human", 5.0, "run-9")
    score = Scorecard(fault="pg-lock", scenario="database-issues", severity="P1", passed=True)
    either.finish_drill(done, "passed", score, None, "run-10", None)
    finished = either.drill(done)
    assert (finished.status, finished.score, finished.scenario_run_id) == ("passed", score, "run-10")
    assert finished.finished_at is not None and either.drill(running).status == "running"
    history = [d.id for d in either.drill_history(limit=500)]
    assert done in history and running not in history


def test_an_alert_resolves_once_and_finds_its_incident_by_identity_and_start(either):
    incident = _open(either, environment=_unique("env"))
    identity, start = _unique("fp"), "2026-11-30T03:00:00Z"
    assert either.record_alert(incident.id, identity, "ServiceDown", "critical", start) == "new"
    assert either.incident_for_alert(f"{identity}:{start}").id == incident.id
    assert either.incident_for_alert(f"{identity}:2026-11-30T04:00:00Z") is None
    assert either.resolve_alert(incident.id, identity) and not either.resolve_alert(incident.id, identity)
    assert not either.resolve_alert(incident.id, _unique("never-fired"))


def _pending(store, environment: str, deadline: datetime | None = None):
    incident = _open(store, environment=environment)
    plan = Plan(incident.id, "api", environment, (), summary="roll back")
    return incident, store.request_approval(incident.id, plan, _unique("run"), deadline_at=deadline)


def test_the_watch_finds_expired_and_waiting_approvals_but_never_a_decided_one(either):
    environment = _unique("env")
    _, expired = _pending(either, environment, NOW - timedelta(minutes=1))
    _, current = _pending(either, environment, NOW + timedelta(minutes=10))
    _, decided = _pending(either, environment, NOW - timedelta(minutes=1))
    either.decide_approval(decided, "approved", "tess", "go")
    assert [a.id for a in either.expired_approvals(environment, NOW)] == [expired]
    assert [a.id for a in either.waiting_approvals(environment, older_than_seconds=0)] == [expired, current]
    assert either.waiting_approvals(environment, older_than_seconds=3600) == []


def test_an_approval_is_quiet_once_every_alert_of_its_incident_stayed_resolved_for_the_grace(either):
    environment = _unique("env")
    incident, approval = _pending(either, environment)
    _, without_alerts = _pending(either, environment)
    identity = _unique("fp")
    either.record_alert(incident.id, identity, "ServiceDown", None, "2026-11-30T03:00:00Z")
    assert either.quiet_approvals(environment, 0, datetime.now(timezone.utc)) == [], "its alert still fires"
    either.resolve_alert(incident.id, identity)
    resolved_at = datetime.now(timezone.utc)
    assert either.quiet_approvals(environment, 60, resolved_at) == [], "resolved, but not for the grace yet"
    quiet = either.quiet_approvals(environment, 60, resolved_at + timedelta(seconds=120))
    assert [(a.id, a.environment) for a in quiet] == [(approval, environment)] and without_alerts not in quiet


def test_standing_containment_is_lifted_once_extended_while_active_and_each_mark_taken_once(either):
    environment = _unique("env")
    incident = _open(either, environment=environment)
    block = IngressDenylistBlock(strategy="ingress_denylist", namespace="prod", ingress="api", cidrs=["203.0.113.7/32"])
    standing = either.record_containment(incident.id, environment, "api", ActionKind.BLOCK_IPS, "ingress/api", block,
                                         NOW + timedelta(hours=4))
    assert either.containment(standing.id).params == standing.params  # read back as the kind's model
    assert either.mark_containment(standing.id, "expiry_asked_at")
    assert not either.mark_containment(standing.id, "expiry_asked_at")
    with pytest.raises(ValueError):
        either.mark_containment(standing.id, "status")
    assert either.extend_containment(standing.id, NOW + timedelta(hours=8))
    extended = either.containment(standing.id)
    assert extended.expires_at == NOW + timedelta(hours=8) and extended.expiry_asked_at is None
    assert [c.id for c in either.containments(environment)] == [standing.id]
    assert either.lift_containment(standing.id, "rita", "the attacker is gone")
    assert not either.lift_containment(standing.id, "rita", "again")
    assert not either.extend_containment(standing.id, NOW + timedelta(hours=12))
    assert either.containments(environment) == []
    lifted = either.containments(environment, active_only=False)
    assert [(c.status, c.lifted_by, c.note) for c in lifted] == [("lifted", "rita", "the attacker is gone")]


def test_an_overdue_duty_is_reminded_once_per_interval_whatever_sweeps(either):
    environment = _unique("env")
    incident = _open(either, environment=environment)
    assert either.claim_duty(incident.id, SUMMARY_24H, due_at=NOW - timedelta(minutes=5))
    every = timedelta(hours=1)
    [overdue] = either.overdue_duties(environment, SUMMARY_24H, NOW, every)
    assert either.duty_reminded(overdue, NOW) and not either.duty_reminded(overdue, NOW), "a second sweep"
    assert either.overdue_duties(environment, SUMMARY_24H, NOW + timedelta(minutes=30), every) == []
    assert len(either.overdue_duties(environment, SUMMARY_24H, NOW + timedelta(hours=2), every)) == 1
    either.complete_duty(incident.id, SUMMARY_24H, "rosa")
    assert either.overdue_duties(environment, SUMMARY_24H, NOW + timedelta(hours=3), every) == []


def test_the_metrics_read_every_incident_but_dry_runs_with_drills_flagged(either):
    environment = _unique("env")
    drill = AlertParameter.model_validate({"status": "firing", "fingerprint": _unique("f"),
                                           "labels": {"alertname": "ServiceDown", "drill_id": _unique("d")}})
    real = _resolved(either, environment)
    practised = _open(either, environment=environment, alert=drill, detected_by=DetectedBy.ALERT)
    either.record_dry_run("service-down", "api", environment, Severity.P2, "[P2] api: dry run", None)
    either.start_postmortem(real.id, None)
    either.complete_postmortem(real.id, "kim", "bad image", [], "# pm", None)
    rows = {row.id: row for row in either.metric_rows(environment)}
    assert set(rows) == {real.id, practised.id}
    assert rows[practised.id].drill and rows[practised.id].from_alert and not rows[real.id].drill
    assert rows[real.id].postmortem_at is not None and rows[real.id].resolved_at is not None
    assert either.metric_rows(environment, since=datetime.now(timezone.utc) + timedelta(hours=1)) == []
