"""A run's lifecycle and its approval gate against in-memory fakes (unit tier, no services):
open, diagnose, plan, ask, act, verify, close or escalate, with the real lifecycle, the real
gate and the real executor (its re-check included) running inline. What a person answers is
given by the test through the lifecycle's `ask` phase. The same paths against the sandbox,
a Prefect server and PostgreSQL are in tests/test_lifecycle.py and tests/test_approval_gate.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from incidents.alerts import AlertParameter
from incidents.findings import Finding
from incidents.followup_models import Drill
from incidents.models import EventKind, Outcome, Severity, Status
from incidents.plans import Plan
from incidents.run_result import RunResult
from incidents.vocabulary import Confidence
from tasks.approval import DEADLINE_APPROVER, TIMEOUT_REASON, ApprovalInput
from tasks.context import RunContext
from tasks.deploys import Verification
from tasks.lifecycle import run_scenario
from tasks.scenario import PHASES, Scenario
from tasks.steps import inline_steps
from tests.action_samples import sample_action
from tests.fake_kubernetes import deployment
from tests.fakes import FakeWiring, ago

SECRETS = {"RUNBOOKS_SECRET_PAGERDUTY_SRE": "r" * 32, "RUNBOOKS_SECRET_PAGERDUTY_LEADS": "l" * 32,
           "RUNBOOKS_SECRET_GITHUB_TOKEN": "unit-token", "RUNBOOKS_SECRET_SLACK_BOT_TOKEN": "xoxb-unit"}


class Person:
    """Answers the gate's questions in turn; `then` runs before an answer (say, someone resolves
    the incident by hand while the approval waits)."""

    def __init__(self, *answers: dict[str, Any] | None, then: Callable[[], None] | None = None):
        self.answers, self.then, self.asked = list(answers), then, 0

    def __call__(self, plan: Plan, timeout: int, poll: float, attempt: int = 0,
                 note: str = "") -> tuple[ApprovalInput | None, bool]:
        self.asked += 1
        if self.then is not None:
            self.then()
        answer = self.answers.pop(0)
        if answer is None:
            return None, True  # the deadline passed
        form = ApprovalInput(**answer)
        return form, form.approver == DEADLINE_APPROVER and form.reason == TIMEOUT_REASON


@pytest.fixture
def wiring(monkeypatch) -> FakeWiring:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    wiring = FakeWiring.of_services()
    wiring.kube.deployments["sandbox", "api"] = deployment(3, "acme/api:v1.5.0", replicas=3)
    return wiring


def _context(wiring: FakeWiring, **approval: Any) -> RunContext:
    ctx = RunContext.load("sandbox", "api", wiring)
    if approval:
        config = ctx.config.model_copy(update={"approval": ctx.config.approval.model_copy(update=approval)})
        ctx = replace(ctx, config=config)
    return ctx


def _scenario(person: Person, *, failing: bool = True, act: bool = True, recovered: bool = True) -> Scenario:
    """A high-error-rate run whose plan scales deployment/api from 3 to 6 replicas."""
    finding = Finding("error rate (/metrics)", not failing,
                      "42% of requests fail" if failing else "0.1% of requests fail")

    def plan(ctx: RunContext, incident: Any, findings: dict[str, Finding], onset: Any) -> Plan:
        actions = (sample_action("scale"),) if act and failing else ()
        return Plan(incident.id, ctx.service_name, ctx.environment, actions, summary="scale api 3 -> 6",
                    confidence=Confidence.STRONG if actions else Confidence.NONE,
                    against=() if actions else ("the error rate and the deploys disagree",))

    return Scenario(name="high-error-rate", default_severity=Severity.P1, impact="Errors for some users",
                    summary=lambda ctx: "error rate high", diagnose=lambda ctx: {"error rate": finding}, plan=plan,
                    verify=lambda ctx, findings, plan: Verification(recovered, 1.0, "0.1% errors" if recovered
                                                                    else "still 40% errors"),
                    root_cause=lambda findings, plan: "overload", prevention=lambda findings, plan: "autoscale",
                    phases=replace(PHASES, ask=person))


def _run(scenario: Scenario, ctx: RunContext) -> RunResult:
    with inline_steps():
        return run_scenario(scenario, ctx, None, False, None)


def _replicas(wiring: FakeWiring) -> int:
    return wiring.kube.deployments["sandbox", "api"]["spec"]["replicas"]


def test_an_approved_plan_runs_once_is_verified_and_the_incident_closes(wiring):
    person = Person({"approve": True, "approver": "sam", "reason": "go"})
    result = _run(_scenario(person), _context(wiring))
    store = wiring.store_
    assert result.outcome == Outcome.RESOLVED and person.asked == 1
    assert _replicas(wiring) == 6 and wiring.kube.calls.count("scale sandbox/api 6") == 1
    incident = store.get(result.incident_id)
    assert incident.status == Status.RESOLVED and incident.root_cause == "overload"
    kinds = store.kinds(incident.id)
    for before, after in [(EventKind.DETECTED, EventKind.DIAGNOSED), (EventKind.DIAGNOSED, EventKind.APPROVAL_APPROVED),
                          (EventKind.APPROVAL_APPROVED, EventKind.ACTION), (EventKind.ACTION, EventKind.RECOVERED),
                          (EventKind.RECOVERED, EventKind.RESOLVED)]:
        assert kinds.index(before) < kinds.index(after), kinds
    [approval] = store.approvals(incident.id)
    assert (approval.decision, approval.approver) == ("approved", "sam (unverified)")
    [logged] = store.action_log(incident.id)
    assert (logged.kind, logged.status) == ("scale", "done")
    issue = wiring.github_.issues[1]
    assert issue["state"] == "closed" and any("Resolution" in c or "overload" in c for c in issue["comments"])
    headlines = wiring.slack_.headlines()
    assert any("RESOLVED" in h.upper() for h in headlines), headlines
    assert ("r" * 32, "trigger") in wiring.pagerduty_.events and ("r" * 32, "resolve") in wiring.pagerduty_.events


def test_a_declined_plan_changes_nothing_and_a_person_takes_over(wiring):
    result = _run(_scenario(Person({"approve": False, "approver": "tess", "reason": "not now"})), _context(wiring))
    store = wiring.store_
    assert result.outcome == Outcome.DECLINED and result.decision.approver == "tess (unverified)"
    assert _replicas(wiring) == 3 and not [c for c in wiring.kube.calls if c.startswith("scale")]
    assert store.action_log(result.incident_id) == []
    assert EventKind.ESCALATED in store.kinds(result.incident_id)
    assert store.get(result.incident_id).resolved_at is None


def test_no_answer_by_the_deadline_counts_as_declined(wiring):
    result = _run(_scenario(Person(None)), _context(wiring))
    assert result.outcome == Outcome.TIMED_OUT and _replicas(wiring) == 3
    kinds = wiring.store_.kinds(result.incident_id)
    assert EventKind.APPROVAL_TIMED_OUT in kinds and EventKind.ESCALATED in kinds


def test_an_unverified_approval_is_not_counted_and_the_gate_keeps_waiting(wiring):
    """Where the severity needs a verified approver, a Resume without one is recorded and
    ignored; the approval counts once a verified approver has signed it."""
    store = wiring.store_

    def sam_signs() -> None:
        if person.asked == 2:
            [pending] = [a for a in store.approvals_.values() if a.decision is None]
            store.sign(pending.id, "sam", "approve", "checked the graphs")

    person = Person({"approve": True, "approver": "mallory", "reason": ""},
                    {"approve": True, "approver": "sam", "reason": "checked the graphs"}, then=sam_signs)
    result = _run(_scenario(person), _context(wiring, require_verified=True))
    assert result.outcome == Outcome.RESOLVED and person.asked == 2
    assert result.decision.approver == "sam (verified)"
    kinds = store.kinds(result.incident_id)
    assert kinds.count(EventKind.APPROVAL_UNVERIFIED) == 1
    [approval] = store.approvals(result.incident_id)
    assert approval.verified and approval.attempt == 1
    assert any("APPROVAL NOT COUNTED" in h for h in wiring.slack_.headlines())


def test_a_plan_for_a_target_that_changed_since_the_approval_does_not_run(wiring):
    def someone_scales() -> None:
        wiring.kube.deployments["sandbox", "api"]["spec"]["replicas"] = 4

    person = Person({"approve": True, "approver": "sam", "reason": "go"}, then=someone_scales)
    result = _run(_scenario(person), _context(wiring))
    assert result.outcome == Outcome.REMEDIATION_FAILED, result
    assert "4 replicas, not 3" in result.error and _replicas(wiring) == 4
    assert EventKind.ESCALATED in wiring.store_.kinds(result.incident_id)


def test_an_incident_resolved_by_hand_while_the_approval_waited_is_left_alone(wiring):
    store = wiring.store_

    def resolved_by_hand() -> None:
        [incident] = store.list(open_only=True)
        store.close(incident.id, "fixed by hand", "restarted the load balancer")

    person = Person({"approve": True, "approver": "sam", "reason": "go"}, then=resolved_by_hand)
    result = _run(_scenario(person), _context(wiring))
    assert result.outcome == Outcome.RESOLVED_ELSEWHERE and _replicas(wiring) == 3
    assert EventKind.STOPPED in store.kinds(result.incident_id)


def test_an_abstaining_plan_asks_nobody_and_escalates(wiring):
    person = Person()
    result = _run(_scenario(person, act=False), _context(wiring))
    assert result.outcome == Outcome.ABSTAINED and person.asked == 0 and _replicas(wiring) == 3
    assert EventKind.ESCALATED in wiring.store_.kinds(result.incident_id)


def test_an_action_that_does_not_bring_the_service_back_escalates(wiring):
    result = _run(_scenario(Person({"approve": True, "approver": "sam", "reason": "go"}), recovered=False),
                  _context(wiring))
    assert result.outcome == Outcome.NOT_RECOVERED and _replicas(wiring) == 6
    assert wiring.store_.get(result.incident_id).resolved_at is None


def test_slack_and_github_down_never_stop_the_remediation(wiring):
    wiring.slack_.down = wiring.github_.down = True
    result = _run(_scenario(Person({"approve": True, "approver": "sam", "reason": "go"})), _context(wiring))
    assert result.outcome == Outcome.RESOLVED and _replicas(wiring) == 6
    failed = [e.message for e in wiring.store_.timeline(result.incident_id)
              if e.kind == EventKind.NOTIFICATION_FAILED]
    assert any(m.startswith("Slack:") for m in failed) and any("GitHub issue not opened" in m for m in failed)


def test_a_second_alert_for_the_same_outage_joins_the_open_incident(wiring):
    ctx = _context(wiring)
    first = _run(_scenario(Person({"approve": False, "approver": "tess", "reason": "wait"})), ctx)
    second = _run(_scenario(Person({"approve": False, "approver": "tess", "reason": "wait"})), ctx)
    assert first.incident_id == second.incident_id
    assert len(wiring.github_.issues) == 1  # announced once


def test_a_dry_run_plans_changes_nothing_and_pages_nobody(wiring):
    person = Person()
    with inline_steps():
        result = run_scenario(_scenario(person), _context(wiring), None, True, None)
    assert result.outcome == Outcome.DRY_RUN and result.plan and person.asked == 0
    assert _replicas(wiring) == 3 and wiring.pagerduty_.events == [] and wiring.slack_.messages == []
    incident = wiring.store_.get(result.incident_id)
    assert incident.resolved_at is not None and EventKind.DRY_RUN in wiring.store_.kinds(incident.id)


def test_what_a_flow_returns_has_the_fields_the_run_reached(wiring):
    """The mapping tools outside the project read (`outcome` and the incident's fields always,
    the rest once the run got there), built from RunResult."""
    base = {"incident_id", "issue", "scenario", "service", "environment", "severity", "dry_run", "outcome"}
    declined = _run(_scenario(Person({"approve": False, "approver": "tess", "reason": "no"})), _context(wiring))
    assert set(declined.as_dict()) == base | {"plan", "judgement", "decision"}
    assert declined.as_dict()["decision"] == {"outcome": "declined", "approver": "tess (unverified)", "reason": "no",
                                              "automatic": False}
    store = wiring.store_
    store.close(declined.incident_id, "x", "y")  # a new outage next
    resolved = _run(_scenario(Person({"approve": True, "approver": "sam", "reason": "go"})), _context(wiring))
    shape = resolved.as_dict()
    assert set(shape) == base | {"plan", "judgement", "decision", "actions", "verification"}
    assert shape["outcome"] == "resolved" and shape["actions"] == ["replicas 3 -> 6"]
    assert shape["verification"] == {"recovered": True, "seconds": 1.0, "detail": "0.1% errors"}


def _drill_alert(drill_id: str) -> AlertParameter:
    return AlertParameter(status="firing", fingerprint=drill_id, starts_at=ago(5).isoformat(),
                          labels={"alertname": "DrillErrors", "service": "api", "environment": "sandbox",
                                  "drill_id": drill_id})


def test_a_registered_running_drill_approves_its_own_plan(wiring):
    wiring.store_.drills["d-1"] = Drill("d-1", "error-spike", "high-error-rate", "sandbox", "api", "auto", 0.0,
                                        "running", ago(10))
    person = Person()
    with inline_steps():
        result = run_scenario(_scenario(person), _context(wiring), None, False, _drill_alert("d-1"))
    assert result.outcome == Outcome.RESOLVED and person.asked == 0 and _replicas(wiring) == 6
    assert result.decision is not None and result.decision.automatic and result.decision.approver == "drill d-1"


@pytest.mark.parametrize("drill", [None, ("finished", "auto"), ("running", "human")])
def test_any_other_drill_id_leaves_the_approval_to_a_person(wiring, drill):
    if drill is not None:
        wiring.store_.drills["d-2"] = Drill("d-2", "error-spike", "high-error-rate", "sandbox", "api", drill[1], 0.0,
                                            drill[0], ago(10))
    person = Person({"approve": False, "approver": "tess", "reason": "not a drill I know"})
    with inline_steps():
        result = run_scenario(_scenario(person), _context(wiring), None, False, _drill_alert("d-2"))
    assert result.outcome == Outcome.DECLINED and person.asked == 1 and _replicas(wiring) == 3


@pytest.mark.parametrize("typed", ["sam + tess (verified)", "sam (verified)", "ana+bo", "x (unverified)"])
def test_a_typed_name_cannot_pose_as_a_verified_or_joint_decision(typed):
    """The Resume form's schema (checked by the Prefect server) and the model refuse it."""
    import jsonschema
    from pydantic import ValidationError

    from tasks.approval import ApprovalInput

    with pytest.raises(ValidationError):
        ApprovalInput(approve=True, approver=typed, reason="")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"approve": True, "approver": typed, "reason": ""}, ApprovalInput.model_json_schema())
    jsonschema.validate({"approve": True, "approver": "sam, tess", "reason": ""}, ApprovalInput.model_json_schema())


def test_a_resumed_run_whose_stored_diagnosis_does_not_read_back_stops_and_changes_nothing(wiring, monkeypatch):
    """The approval row still reads (tests/test_domain.py); the resume, which needs the findings,
    stops with the reason before anything acts."""
    import tasks.lifecycle as lifecycle

    first = _run(_scenario(Person(None)), _context(wiring))  # asked, then declined at its deadline
    [asked] = wiring.store_.approvals(first.incident_id)
    unreadable = replace(asked, findings=None, unreadable_findings="ValidationError: a fact this version lacks")
    monkeypatch.setattr(lifecycle, "_resumption", lambda ctx: unreadable)
    approving = Person({"approve": True, "approver": "sam", "reason": "go"})
    with pytest.raises(lifecycle.DiagnosisUnreadable, match="does not read back.*a fact this version lacks"):
        _run(_scenario(approving), _context(wiring))
    assert approving.asked == 0 and _replicas(wiring) == 3
    assert not [c for c in wiring.kube.calls if c.startswith("scale")]
