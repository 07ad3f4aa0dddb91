"""Severity, incident status and the incident record, as the playbook defines them."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from incidents.vocabulary import DetectedBy, Word

if TYPE_CHECKING:
    from incidents.alerts import AlertParameter
    from incidents.findings import Finding
    from incidents.plans import Plan
    from incidents.timeline_payloads import Payload


class Severity(str, Enum):
    P0 = "P0"
    P1 = "P1"
    P2 = "P2"
    P3 = "P3"

    @property
    def label(self) -> str:
        return {"P0": "Critical", "P1": "High", "P2": "Medium", "P3": "Low"}[self.value]

    @property
    def response_time(self) -> timedelta:
        """The playbook's Escalation Matrix."""
        return {"P0": timedelta(minutes=5), "P1": timedelta(minutes=15),
                "P2": timedelta(hours=1), "P3": timedelta(hours=4)}[self.value]

    @property
    def escalation(self) -> str:
        return {"P0": "Immediate notification to all team members",
                "P1": "Notify on-call engineer + team lead",
                "P2": "Notify team lead",
                "P3": "Create issue, normal process"}[self.value]

    @property
    def labels(self) -> list[str]:
        """GitHub labels for the incident issue: incident, severity, priority:high for P0/P1, area:infra."""
        labels = ["incident", self.value]
        if self in (Severity.P0, Severity.P1):
            labels.append("priority:high")
        return labels + ["area:infra"]


class Status(str, Enum):
    INVESTIGATING = "Investigating"
    IDENTIFIED = "Identified"
    MONITORING = "Monitoring"
    RESOLVED = "Resolved"


@dataclass
class Incident:
    id: int
    dedup_key: str
    scenario: str
    service: str
    environment: str
    severity: Severity
    status: Status
    title: str
    opened_at: datetime
    detected_by: DetectedBy | str = DetectedBy.RUNBOOK  # text only for a value an older release wrote
    github_repo: str | None = None
    github_issue: int | None = None
    issue_url: str | None = None
    flow_run_id: str | None = None
    alert: AlertParameter | None = None  # the alert that opened it; read from its stored record here, once
    resolved_at: datetime | None = None
    root_cause: str | None = None
    resolution: str | None = None
    started_at: datetime | None = None        # when the problem began (the alert's startsAt)
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    escalation_level: int = 0
    escalated_at: datetime | None = None
    recovered_at: datetime | None = None
    eta: str | None = None
    impact: str | None = None
    users_affected: str | None = None
    last_update_at: datetime | None = None
    announced_at: datetime | None = None      # its issue and Initial Alert went out (once)
    created: bool = field(default=False, compare=False)  # True when this call opened it
    joined: bool = field(default=False, compare=False)   # True when a run joined it (another run works it)

    def __post_init__(self) -> None:
        if isinstance(self.alert, dict):  # the stored record (a JSON column)
            from incidents.alerts import AlertParameter

            self.alert = AlertParameter.model_validate(self.alert)

    @property
    def issue_ref(self) -> str:
        return f"#{self.github_issue}" if self.github_issue else "(no issue yet)"


class EventKind(Word):
    """What an entry of the incident timeline records. Stored as its value (a text column),
    read back as the enum member; a kind written by an older release reads back as text."""

    # the alert and the incident
    DETECTED = "detected"
    JOINED = "joined"  # another alert or run joined the open incident
    FLAP = "flap"  # the same alert fired again while the incident was open
    ALERT_RESOLVED = "alert_resolved"
    ISSUE_OPENED = "issue_opened"
    NOTIFIED = "notified"
    NOTIFICATION_FAILED = "notification_failed"
    STATUS_UPDATE = "status_update"
    PAGED = "paged"
    PAGER_ACKNOWLEDGE = "pager_acknowledge"  # we told PagerDuty a person answered
    PAGER_RESOLVE = "pager_resolve"
    PAGER_ACKNOWLEDGED = "pager_acknowledged"  # PagerDuty told us (the incident was acknowledged already)
    PAGER_RESOLVED = "pager_resolved"
    ACKNOWLEDGED = "acknowledged"
    ESCALATED = "escalated"
    # the runbook
    INVESTIGATING = "investigating"
    RESUMED = "resumed"
    HANDED_OVER = "handed_over"
    ROLE_ASSIGNED = "role_assigned"  # an incident role handed over to someone
    NOTE = "note"  # the scribe's (or anyone's) note, for the timeline and the post-mortem
    SEVERITY_CHANGED = "severity_changed"  # a person set the incident's severity
    COMMAND_REFUSED = "command_refused"  # a Slack command by someone without the right
    COMMANDER_ASKED = "commander_asked"  # the approvers were silent: the commander is asked to decide
    STAKEHOLDER_DRAFT = "stakeholder_draft"  # a stakeholder update drafted for the Communications lead
    SUMMARY_DRAFTED = "summary_drafted"  # the 24-hour summary (and public statement) drafted
    SUMMARY_SENT = "summary_sent"  # the Communications lead sent the 24-hour summary
    SUMMARY_OVERDUE = "summary_overdue"
    FINDINGS_ADDED = "findings_added"
    DIAGNOSED = "diagnosed"
    DRY_RUN = "dry_run"
    CONFIRMING = "confirming"
    STOPPED = "stopped"
    ACTION = "action"
    ACTION_FAILED = "action_failed"
    RECOVERED = "recovered"
    CANCELLED = "cancelled"
    EVIDENCE_CAPTURED = "evidence_captured"
    ADDRESSES_DROPPED = "addresses_dropped"
    PUBLIC_DRAFT = "public_draft"
    # approvals
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_APPROVED = "approval_approved"
    APPROVAL_DECLINED = "approval_declined"
    APPROVAL_TIMED_OUT = "approval_timed_out"
    APPROVAL_WITHDRAWN = "approval_withdrawn"
    APPROVAL_DEADLINE = "approval_deadline"
    APPROVAL_CLOSED = "approval_closed"
    APPROVAL_SIGNED = "approval_signed"
    APPROVAL_UNVERIFIED = "approval_unverified"
    APPROVAL_REFUSED = "approval_refused"
    APPROVAL_NOT_DELIVERED = "approval_not_delivered"
    # the end and after
    RESOLVED = "resolved"
    RESOLVED_BY_HAND = "resolved_by_hand"
    # containment that stands after the incident (incidents/containment.py)
    CONTAINMENT_RECORDED = "containment_recorded"
    CONTAINMENT_EXPIRED = "containment_expired"
    CONTAINMENT_WIDENS = "containment_widens"
    CONTAINMENT_LIFTED = "containment_lifted"
    DRILL_CLOSED = "drill_closed"
    POSTMORTEM_REQUESTED = "postmortem_requested"
    POSTMORTEM_STARTED = "postmortem_started"
    POSTMORTEM_NOT_STARTED = "postmortem_not_started"
    POSTMORTEM_WAITING = "postmortem_waiting"
    POSTMORTEM_OVERDUE = "postmortem_overdue"
    POSTMORTEM_COMPLETED = "postmortem_completed"
    ACTION_ITEM_FILED = "action_item_filed"
    ACTION_ITEM_DONE = "action_item_done"


class Outcome(StrEnum):
    """How a run ended: the `outcome` of the result a scenario flow (or the post-incident flow)
    returns."""

    RESOLVED = "resolved"  # acted, recovery verified, incident resolved
    NOT_RECOVERED = "not_recovered"  # acted, the service did not recover: escalated
    REMEDIATION_FAILED = "remediation_failed"  # an approved action failed or could not start: escalated
    DECLINED = "declined"  # the plan was declined: escalated, nothing changed
    TIMED_OUT = "timed_out"  # nobody answered the approval in time: escalated, nothing changed
    WITHDRAWN = "withdrawn"  # the alert resolved and stayed resolved while the approval waited
    RESOLVED_ELSEWHERE = "resolved_elsewhere"  # the incident was resolved while the run waited
    ABSTAINED = "abstained"  # the evidence conflicts or is too thin: escalated with the findings
    ESCALATED = "escalated"  # the checks fail and no remedy applies
    NO_IMPACT = "no_impact"  # every check passes: resolved as no impact
    JOINED = "joined"  # another runbook holds the service: findings added to its incident
    DRY_RUN = "dry_run"  # planned only
    # the post-incident flow
    PUBLISHED = "published"
    ALREADY_COMPLETED = "already_completed"
    FORM_TIMED_OUT = "form_timed_out"


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    actor: str
    kind: EventKind | str  # text only for a kind an older release wrote
    message: str
    data: Payload  # the kind's model (incidents/timeline_payloads.py)


@dataclass(frozen=True)
class CancelRequest:
    """Who asked, through the runbooks, for a run's Cancel, and why. A Cancel pressed in Prefect's
    UI or sent to its API leaves none: that run was cancelled by an operator, name unknown."""

    flow_run_id: str
    requested_by: str
    reason: str
    requested_at: datetime


@dataclass(frozen=True)
class Lease:
    """Which run works a service (its target, `environment/service`) now, and for which
    incident: one runbook acts on a target at a time. A joined incident's own run holds it
    without a stored lease (no target, no time)."""

    flow_run_id: str
    incident_id: int
    scenario: str
    target: str | None = None
    taken_at: datetime | None = None

    def as_data(self) -> dict[str, Any]:
        """What the timeline records of the holder."""
        return {"flow_run_id": self.flow_run_id, "scenario": self.scenario, "incident_id": self.incident_id}


def _columns(cls: type[Any], row: dict[str, Any]) -> dict[str, Any]:
    """The row's values for the dataclass's fields (a column added by a later schema is left out)."""
    return {f.name: row[f.name] for f in fields(cls) if f.name in row}


def unreadable(exc: Exception) -> str:
    """Why a stored record did not read back, in one line (pydantic's first error: where, what)."""
    errors = getattr(exc, "errors", None)
    if callable(errors) and errors():
        first = errors()[0]
        return f"{'.'.join(str(part) for part in first['loc']) or 'the record'}: {first['msg']}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


R = TypeVar("R", bound="StoreRow")


class StoreRow:
    """A row of the store as a frozen dataclass: `from_row` takes the columns the class declares."""

    @classmethod
    def from_row(cls: type[R], row: dict[str, Any]) -> R:
        return cls(**_columns(cls, row))


@dataclass(frozen=True)
class Approval(StoreRow):
    """A plan's approval request and its answer. `plan` is the plan asked about, read back from
    its stored record (`Plan.from_dict`) once, here; `findings`, what the diagnosis saw (a resumed
    run continues from them), read back as `Finding`s the same way. A stored diagnosis that no
    longer reads back (a later version changed a check's facts) leaves `findings` None and says
    why in `unreadable_findings`: only a resume needs the findings, so only a resume fails on it,
    while the approval page, Slack, the watch and the post-mortem still read the row. The
    incident's environment, severity, service, issue and title come with it when the store joins
    them (`IncidentStore.approval`, `approval_by_token`)."""

    id: int
    incident_id: int
    plan_digest: str
    plan: Plan
    flow_run_id: str | None
    requested_at: datetime
    token: str | None = None
    deadline_at: datetime | None = None
    findings: dict[str, Finding] | None = None
    decision: str | None = None  # approved | declined | timed_out | withdrawn; None: pending
    decided_at: datetime | None = None
    approver: str | None = None
    reason: str | None = None
    automatic: bool = False
    attempt: int = 0  # raised each time an unverified answer is refused, so the gate asks again
    verified: bool = False
    environment: str | None = None
    severity: str | None = None
    service: str | None = None
    github_issue: int | None = None
    title: str | None = None
    unreadable_findings: str | None = None  # not a column: why the stored diagnosis did not read back

    def __post_init__(self) -> None:
        if isinstance(self.plan, dict):  # the stored record (a JSON column)
            from incidents.plans import Plan

            object.__setattr__(self, "plan", Plan.from_dict(self.plan))
        from incidents.findings import Finding

        stored: dict[str, Any] = dict(self.findings or {})  # the JSON column, or Findings already
        if all(isinstance(each, Finding) for each in stored.values()):
            return
        try:
            object.__setattr__(self, "findings", {check: Finding(**each) for check, each in stored.items()})
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError and UnknownCheck are ValueErrors
            object.__setattr__(self, "findings", None)
            object.__setattr__(self, "unreadable_findings", unreadable(exc))


SIGNERS_SEPARATOR = ", "  # how the approval page names several verified approvers in the Resume input


def pause_key(plan_digest: str, attempt: int) -> str:
    """The key a run pauses under for an approval request (tasks/approval.py): Prefect keeps the
    answer a Resume hands over as the run input `<state>-<key>-response` ("suspended" for a
    deployed run, "paused" for one run in-process)."""
    return f"approval-{plan_digest[:12]}" + (f"-{attempt}" if attempt else "")


@dataclass(frozen=True)
class Signature(StoreRow):
    """A verified approver's answer to an approval request."""

    approval_id: int
    approver: str
    decision: str  # approve | decline
    reason: str | None
    signed_at: datetime



@dataclass(frozen=True)
class ActionRecord:
    """One approved action in the action log, claimed once: `first` is True for the claim that
    created it (a repeat finds it done, or started and interrupted)."""

    plan_digest: str
    action_digest: str
    incident_id: int
    kind: str
    status: str  # started | done | failed | refused (the target changed: the grant has ended)
    attempts: int
    started_at: datetime
    finished_at: datetime | None = None
    detail: str | None = None
    acting_at: datetime | None = None  # when an attempt began to change the target
    first: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any], first: bool = False) -> "ActionRecord":
        return cls(**_columns(cls, row), first=first)


@dataclass(frozen=True)
class SlackThread:
    """An incident's Slack thread: its channel, its parent message's ts, and the parent's text."""

    channel: str
    ts: str
    parent: str


@dataclass(frozen=True)
class IncidentAlert(StoreRow):
    """An alert that opened or joined an incident, by identity (its fingerprint without replica labels)."""

    incident_id: int
    identity: str
    alertname: str
    severity: str | None
    status: str  # firing | resolved
    starts_at: str
    first_seen: datetime
    last_seen: datetime
    resolved_at: datetime | None = None
    flaps: int = 0

