"""The records of what follows an incident and of drills: post-mortems, their action items,
proposed playbook changes, and each drill's run and score, as the store returns them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from incidents.models import StoreRow


class Scorecard(BaseModel):
    """A drill's score (incidents/drills.py `score`): times against the playbook's targets, the
    playbook steps taken, and the plan graded against the catalog's expected outcome. Stored as
    JSON with the drill; a field a later release adds reads back with its default here."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    fault: str
    scenario: str
    severity: str
    time_to_detect_s: float | None = None
    time_to_approve_s: float | None = None
    time_to_recover_s: float | None = None
    mttd_target_s: float | None = None
    mttr_target_s: float | None = None  # only a P0 that needs a remedy has one
    mttd_met: bool = False
    mttr_met: bool = False
    steps: dict[str, bool] = {}  # the fault's expected playbook steps: taken or not
    runbook_outcome: str | None = None
    expected: str = ""
    judgement: str | None = None  # right | abstain | wrong | harmful; None: no plan recorded
    planned: list[str] = []
    confidence: str | None = None
    passed: bool = False

    def as_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class Drill(StoreRow):
    """A drill's record: what was injected where, how its approval is given, and its score
    (incidents/drills.py `score`) once it finished."""

    id: str
    fault: str
    scenario: str
    environment: str
    service: str
    approval_mode: str  # auto | human
    approval_delay_seconds: float
    status: str  # running | passed | failed | ...
    started_at: datetime
    finished_at: datetime | None = None
    flow_run_id: str | None = None
    scenario_run_id: str | None = None
    incident_id: int | None = None
    score: Scorecard | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.score, dict):  # the stored record (a JSON column)
            object.__setattr__(self, "score", Scorecard.model_validate(self.score))



class Lesson(BaseModel):
    """A lesson learned, as the post-mortem form asks for it and the store keeps it."""

    lesson: str = Field(min_length=1, max_length=2000, pattern=r"\S", description="What was learned.")
    playbook_change: bool = Field(False, description="On: propose this as a change to the playbook.")
    playbook_section: str = Field("", max_length=120, description="Which playbook section (e.g. Scenario 1).")


@dataclass(frozen=True)
class Postmortem(StoreRow):
    """An incident's post-mortem: requested when it resolved, completed through the form."""

    incident_id: int
    requested_at: datetime
    flow_run_id: str | None = None
    completed_at: datetime | None = None
    completed_by: str | None = None
    root_cause: str | None = None
    lessons: list[Lesson] | None = None
    markdown: str | None = None
    last_reminded_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.lessons and isinstance(self.lessons[0], dict):  # the stored record (a JSON column)
            object.__setattr__(self, "lessons", [Lesson.model_validate(lesson) for lesson in self.lessons])



@dataclass(frozen=True)
class ActionItemRecord(StoreRow):
    """A post-mortem's action item, tracked through its GitHub issue; the incident's environment,
    service and issue come with it when the store joins them."""

    id: int
    incident_id: int
    title: str
    owner: str | None
    horizon: str  # 24h | 1w
    due_at: datetime
    created_at: datetime
    repo: str | None = None
    issue_number: int | None = None
    issue_url: str | None = None
    completed_at: datetime | None = None
    last_reminded_at: datetime | None = None
    environment: str | None = None
    service: str | None = None
    incident_issue: int | None = None



@dataclass(frozen=True)
class Proposal(StoreRow):
    """A lesson a post-mortem tagged as a change to the playbook, with its incident's facts."""

    id: int
    incident_id: int
    section: str
    proposal: str
    proposed_at: datetime
    service: str | None = None
    severity: str | None = None
    github_issue: int | None = None
    issue_url: str | None = None



@dataclass(frozen=True)
class OverduePostmortem:
    """A resolved incident whose post-mortem is late, and the post-incident run that asks for it."""

    incident_id: int
    postmortem_run: str | None
