"""What each kind of timeline entry records besides its message: one model per kind
(`PAYLOADS`), written by the step that adds the entry and read back as the same model.

The store keeps a payload as JSON under the same keys as before the models (`as_data`), so
rows written by an older release, SQL that reads a key (`data->>'flow_run_id'`) and the
post-mortem's readers are unchanged. A stored payload that its kind's model cannot read (a
release that wrote other keys) reads back as `Unread`, which no reader mistakes for its kind's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError

from incidents.alerts import AlertParameter
from incidents.check_facts import SecretMeta
from incidents.errors import RunbookError
from incidents.models import EventKind, Severity
from incidents.plans import Plan
from incidents.run_result import Judgement


class Payload(BaseModel):
    """Keys a later release no longer writes are ignored on reading; a writer's misspelt
    field is caught by mypy's pydantic plugin."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, arbitrary_types_allowed=True)

    def as_data(self) -> dict[str, Any]:
        """The JSON the store keeps: the fields the writer set, under their stored names."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class NoData(Payload):
    """The message says it all."""


class Unread(Payload):
    """A stored payload its kind's model could not read (kept as stored, for display only)."""

    model_config = ConfigDict(frozen=True, extra="allow")


def _plan(value: Any) -> Plan:
    return value if isinstance(value, Plan) else Plan.from_dict(value)


StoredPlan = Annotated[Plan, BeforeValidator(_plan), PlainSerializer(lambda plan: plan.to_dict())]


# -- the alert and the incident ---------------------------------------------------------------------
class AlertSeen(Payload):
    """DETECTED: the alert (or declaration) that opened the incident, redacted."""

    alert: AlertParameter | None = None


class AlertJoined(Payload):
    """JOINED, FLAP: another alert or run joined the open incident."""

    seen: str  # new | refired | repeat
    alert: AlertParameter | None = None
    raised_from: Severity | None = None  # the severity before this alert raised it
    paged: list[str] = []
    flow_run_id: str | None = None  # the run the joining alert started


class AlertCleared(Payload):
    """ALERT_RESOLVED: one of the incident's alerts stopped firing."""

    identity: str


class IssueOpened(Payload):
    url: str
    labels: list[str] = []


class Resolution(Payload):
    root_cause: str


class Escalation(Payload):
    """ESCALATED: by a runbook that could not act (`paged` and `severity` set), or by the watch
    for an incident nobody acknowledged (`level` and `unacknowledged_minutes` set)."""

    contacts: list[str] = []
    paged: list[str] | None = None  # who was paged now (the rest had been, within the response time)
    severity: Severity | None = None
    level: int | None = None
    unacknowledged_minutes: float | None = None

    def rung(self) -> list[str]:
        """Who this escalation paged."""
        return self.paged if self.paged is not None else self.contacts


class StatusUpdate(Payload):
    eta: str | None = None
    impact: str | None = None


class PagerStep(Payload):
    """PAGED, PAGER_ACKNOWLEDGE, PAGER_RESOLVE: what was sent to which pager."""

    pager: str
    dedup_key: str
    action: str


# -- the runbook --------------------------------------------------------------------------------------
class FindingBrief(Payload):
    ok: bool | None  # None: the check itself could not run
    summary: str


class Diagnosis(Payload):
    """DIAGNOSED: each check's verdict, and the plan's judgement."""

    findings: dict[str, FindingBrief] = {}
    judgement: Judgement


class DryRunPlan(Payload):
    plan: StoredPlan
    judgement: Judgement


class RunHolder(Payload):
    flow_run_id: str
    scenario: str
    incident_id: int


class FindingsAdded(Payload):
    """FINDINGS_ADDED: a second runbook's checks, added to the one that holds the service."""

    findings: dict[str, FindingBrief] = {}
    holder: RunHolder


class Resumed(Payload):
    flow_run_id: str
    run_count: int


class HandedOver(Payload):
    support: list[str] = []


class ActionTaken(Payload):
    changed: bool


class CancelledRun(Payload):
    flow_run_id: str
    done: list[str] = []  # each claimed action with its state, when the run had a process


class RunStarted(Payload):
    """POSTMORTEM_STARTED: the post-incident run."""

    flow_run_id: str


class RoleChange(Payload):
    role: str
    before: str | None = Field(default=None, alias="from")
    to: str


class SeverityChange(Payload):
    before: Severity = Field(alias="from")
    to: Severity
    paged: list[str] = []


class CommanderAsked(Payload):
    approval_id: int
    commander: str
    silent_minutes: float


class StakeholderDraft(Payload):
    count: int
    comms: str | None = None


class SummaryDrafted(Payload):
    due: datetime


class EvidenceCaptured(Payload):
    """The secrets the evidence snapshot saw (names, keys and versions; never values)."""

    secrets: list[SecretMeta] = []


class AddressesDropped(Payload):
    dropped: list[str]
    kept: list[str]


# -- approvals and containment ------------------------------------------------------------------------
class ApprovalStep(Payload):
    """APPROVAL_REQUESTED and each decision: the plan it was about."""

    plan_digest: str
    automatic: bool = False


class UnverifiedAnswer(Payload):
    page: str | None = None


class ContainmentRef(Payload):
    containment_id: int


_WITH_DATA: dict[EventKind, type[Payload]] = {
    EventKind.DETECTED: AlertSeen, EventKind.JOINED: AlertJoined, EventKind.FLAP: AlertJoined,
    EventKind.ALERT_RESOLVED: AlertCleared, EventKind.ISSUE_OPENED: IssueOpened, EventKind.RESOLVED: Resolution,
    EventKind.ESCALATED: Escalation, EventKind.STATUS_UPDATE: StatusUpdate,
    EventKind.PAGED: PagerStep, EventKind.PAGER_ACKNOWLEDGE: PagerStep, EventKind.PAGER_RESOLVE: PagerStep,
    EventKind.DIAGNOSED: Diagnosis, EventKind.DRY_RUN: DryRunPlan, EventKind.FINDINGS_ADDED: FindingsAdded,
    EventKind.RESUMED: Resumed, EventKind.HANDED_OVER: HandedOver, EventKind.ACTION: ActionTaken,
    EventKind.CANCELLED: CancelledRun, EventKind.POSTMORTEM_STARTED: RunStarted,
    EventKind.ROLE_ASSIGNED: RoleChange, EventKind.SEVERITY_CHANGED: SeverityChange,
    EventKind.COMMANDER_ASKED: CommanderAsked, EventKind.STAKEHOLDER_DRAFT: StakeholderDraft,
    EventKind.SUMMARY_DRAFTED: SummaryDrafted, EventKind.EVIDENCE_CAPTURED: EvidenceCaptured,
    EventKind.ADDRESSES_DROPPED: AddressesDropped,
    EventKind.APPROVAL_REQUESTED: ApprovalStep, EventKind.APPROVAL_APPROVED: ApprovalStep,
    EventKind.APPROVAL_DECLINED: ApprovalStep, EventKind.APPROVAL_TIMED_OUT: ApprovalStep,
    EventKind.APPROVAL_WITHDRAWN: ApprovalStep, EventKind.APPROVAL_UNVERIFIED: UnverifiedAnswer,
    EventKind.CONTAINMENT_RECORDED: ContainmentRef, EventKind.CONTAINMENT_LIFTED: ContainmentRef,
    EventKind.CONTAINMENT_EXPIRED: ContainmentRef, EventKind.CONTAINMENT_WIDENS: ContainmentRef,
}
PAYLOADS: dict[EventKind, type[Payload]] = {kind: _WITH_DATA.get(kind, NoData) for kind in EventKind}


class WrongPayload(RunbookError, TypeError):
    """A step wrote an entry with another kind's payload: a bug, refused before anything is written."""


def checked(kind: EventKind, payload: Payload | None) -> Payload:
    """The payload to write for `kind` (NoData for none); WrongPayload if it is another kind's."""
    payload = NoData() if payload is None else payload
    if type(payload) is not PAYLOADS[kind]:
        raise WrongPayload(f"a {kind.value} entry takes {PAYLOADS[kind].__name__}, not {type(payload).__name__}")
    return payload


def read(kind: EventKind | str, data: Any) -> Payload:
    """A stored payload as its kind's model (Unread when the model cannot read it)."""
    model = PAYLOADS.get(kind, NoData) if isinstance(kind, EventKind) else NoData
    try:
        return model.model_validate(data or {})
    except ValidationError:
        return Unread.model_validate(data if isinstance(data, dict) else {"value": data})


P = TypeVar("P", bound=Payload)


def payload_as(data: Payload, model: type[P]) -> P | None:
    """`data` when it is a `model` (an entry of that model's kind, read as it), else None."""
    return data if isinstance(data, model) else None
