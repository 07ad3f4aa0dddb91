"""What a scenario run ends with: the model the lifecycle builds as the run goes, and the
mapping a scenario flow returns (`as_dict()`, the shape the drill, the CLI and tools outside
the project read: `outcome` and the incident's fields always, the rest once the run got there)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from incidents.models import Outcome


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Judgement(_Part):
    """How sure the plan is, and the evidence for and against it."""

    confidence: str
    abstained: bool
    summary: str
    kinds: list[str]
    support: list[str]
    against: list[str]


class DecisionSummary(_Part):
    outcome: str  # approved | declined | timed_out | withdrawn
    approver: str | None
    reason: str
    automatic: bool


class VerificationSummary(_Part):
    recovered: bool
    seconds: float
    detail: str


class RunResult(_Part):
    """A scenario run's result. The first eight fields are known once the incident is open;
    the others are set as the run reaches them, and `as_dict()` leaves out what it never reached."""

    incident_id: int
    issue: str | None
    scenario: str
    service: str
    environment: str
    severity: str
    dry_run: bool
    outcome: Outcome | None = None
    plan: list[str] | None = None  # each action in the operator's words
    judgement: Judgement | None = None
    decision: DecisionSummary | None = None
    actions: list[str] | None = None  # what each action did
    verification: VerificationSummary | None = None
    error: str | None = None  # why a remediation failed
    failing: list[str] | None = None  # the checks failing (a dry run)
    planned_by: str | None = None  # the scenario whose rule made the plan (a dry run, after any handover)
    held_by: str | None = None  # the run that works the service (this run joined it)
    resumed: bool | None = None  # the run came back at its approval

    def with_(self, **fields: Any) -> RunResult:
        """This result with more of the run known (validated like the rest)."""
        return type(self).model_validate({**self.as_dict(), **fields})

    def ended(self, outcome: Outcome, **fields: Any) -> RunResult:
        return self.with_(outcome=outcome, **fields)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)
