"""Each kind of timeline entry has one payload model (incidents/timeline_payloads.py), written
and read back as that model, stored under the keys the store kept before the models (SQL reads
`data->>'flow_run_id'`, and rows of older releases stay readable)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from incidents import timeline_payloads as payloads
from incidents.alerts import AlertParameter
from incidents.check_facts import SecretMeta
from incidents.models import EventKind, Severity
from incidents.plans import Plan, PlannedAction
from incidents.run_result import Judgement
from incidents.vocabulary import ActionKind, Confidence

JUDGEMENT = Judgement(confidence=Confidence.STRONG, abstained=False, summary="bad release", kinds=["rollback"],
                      support=["v1.6.0 crash-loops"], against=[])
PLAN = Plan(7, "api", "sandbox", (PlannedAction(ActionKind.SCALE, "deployment/api (namespace sandbox)", "3", "5",
                                                "kubectl scale", {"namespace": "sandbox", "deployment": "api",
                                                                  "from": 3, "to": 5}),), summary="scale up")
ALERT = AlertParameter.model_validate({"status": "firing", "labels": {"alertname": "ServiceDown", "service": "api"}})
SAMPLES: dict[type[payloads.Payload], payloads.Payload] = {
    payloads.NoData: payloads.NoData(),
    payloads.AlertSeen: payloads.AlertSeen(alert=ALERT),
    payloads.AlertJoined: payloads.AlertJoined(seen="new", alert=ALERT, raised_from=Severity.P1, paged=["@ic"],
                                               flow_run_id="run-2"),
    payloads.AlertCleared: payloads.AlertCleared(identity="fp-1"),
    payloads.IssueOpened: payloads.IssueOpened(url="https://github.test/acme/incidents/issues/3", labels=["P1"]),
    payloads.Resolution: payloads.Resolution(root_cause="bad release"),
    payloads.Escalation: payloads.Escalation(level=1, contacts=["@ic"], unacknowledged_minutes=6.5),
    payloads.StatusUpdate: payloads.StatusUpdate(eta="15 min", impact=None),
    payloads.PagerStep: payloads.PagerStep(pager="primary", dedup_key="sandbox/api", action="trigger"),
    payloads.Diagnosis: payloads.Diagnosis(findings={"health": payloads.FindingBrief(ok=False, summary="down"),
                                                     "logs": payloads.FindingBrief(ok=None, summary="could not check")},
                                           judgement=JUDGEMENT),
    payloads.DryRunPlan: payloads.DryRunPlan(plan=PLAN, judgement=JUDGEMENT),
    payloads.FindingsAdded: payloads.FindingsAdded(holder=payloads.RunHolder(flow_run_id="run-1", scenario="sd",
                                                                             incident_id=7)),
    payloads.Resumed: payloads.Resumed(flow_run_id="run-1", run_count=2),
    payloads.HandedOver: payloads.HandedOver(support=["disk full"]),
    payloads.ActionTaken: payloads.ActionTaken(changed=True),
    payloads.CancelledRun: payloads.CancelledRun(flow_run_id="run-1", done=["rollback (succeeded)"]),
    payloads.RunStarted: payloads.RunStarted(flow_run_id="run-9"),
    payloads.RoleChange: payloads.RoleChange(role="commander", before="@ic", to="@dana"),
    payloads.SeverityChange: payloads.SeverityChange(before=Severity.P2, to=Severity.P0, paged=["@cto"]),
    payloads.CommanderAsked: payloads.CommanderAsked(approval_id=3, commander="@ic", silent_minutes=12.0),
    payloads.StakeholderDraft: payloads.StakeholderDraft(count=2, comms="@comms"),
    payloads.SummaryDrafted: payloads.SummaryDrafted(due=datetime(2026, 12, 8, 3, 0, tzinfo=timezone.utc)),
    payloads.EvidenceCaptured: payloads.EvidenceCaptured(
        secrets=[SecretMeta(name="api-credentials", data_keys=["token"])]),
    payloads.AddressesDropped: payloads.AddressesDropped(dropped=["api.example (a name)"], kept=["203.0.113.9/32"]),
    payloads.ApprovalStep: payloads.ApprovalStep(plan_digest="abc", automatic=True),
    payloads.UnverifiedAnswer: payloads.UnverifiedAnswer(page="https://approvals.test/a/1"),
    payloads.ContainmentRef: payloads.ContainmentRef(containment_id=4),
}


def test_every_kind_has_a_model_and_every_model_a_sample():
    assert set(payloads.PAYLOADS) == set(EventKind)
    assert set(payloads.PAYLOADS.values()) == set(SAMPLES), "a payload model without a sample here"


@pytest.mark.parametrize("kind", list(EventKind), ids=str)
def test_each_kinds_payload_reads_back_as_written(kind):
    written = SAMPLES[payloads.PAYLOADS[kind]]
    assert payloads.read(kind, payloads.checked(kind, written).as_data()) == written


def test_the_stored_keys_are_those_written_before_the_models():
    """What SQL and older rows rely on: the joining run's id, "from"/"to", severities and kinds
    as their text, a plan as Plan.to_dict, the alert as its dict."""
    assert SAMPLES[payloads.AlertJoined].as_data() == {"seen": "new", "alert": ALERT.as_dict(), "raised_from": "P1",
                                                       "paged": ["@ic"], "flow_run_id": "run-2"}
    assert SAMPLES[payloads.RoleChange].as_data() == {"role": "commander", "from": "@ic", "to": "@dana"}
    assert SAMPLES[payloads.SeverityChange].as_data() == {"from": "P2", "to": "P0", "paged": ["@cto"]}
    assert SAMPLES[payloads.DryRunPlan].as_data()["plan"] == json.loads(json.dumps(PLAN.to_dict()))  # as stored
    assert SAMPLES[payloads.Diagnosis].as_data()["judgement"]["kinds"] == ["rollback"]
    assert SAMPLES[payloads.Escalation].as_data() == {"level": 1, "contacts": ["@ic"], "unacknowledged_minutes": 6.5}
    assert SAMPLES[payloads.EvidenceCaptured].as_data() == {"secrets": [{"name": "api-credentials", "keys": ["token"]}]}
    older = {"role": "comms", "from": "@a", "to": "@b"}  # a row written before the models
    assert payloads.read(EventKind.ROLE_ASSIGNED, older) == payloads.RoleChange(role="comms", before="@a", to="@b")


def test_a_stored_payload_its_model_cannot_read_is_kept_apart_not_mistaken_for_its_kind():
    unread = payloads.read(EventKind.CANCELLED, {"who": "someone"})  # no flow_run_id
    assert isinstance(unread, payloads.Unread) and payloads.payload_as(unread, payloads.CancelledRun) is None
    assert payloads.read("a_kind_of_a_later_release", {"x": 1}) == payloads.NoData()


def test_a_payload_of_another_kind_is_refused():
    with pytest.raises(payloads.WrongPayload, match="a cancelled entry takes CancelledRun, not NoData"):
        payloads.checked(EventKind.CANCELLED, payloads.NoData())
    with pytest.raises(payloads.WrongPayload):
        payloads.checked(EventKind.ROLE_ASSIGNED, None)
    assert payloads.checked(EventKind.NOTE, None) == payloads.NoData()
