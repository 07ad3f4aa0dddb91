"""The records of what follows an incident and of drills: post-mortems, their action items,
proposed playbook changes, and each drill's run and score, as the store returns them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from incidents.models import StoreRow


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
    score: dict[str, Any] | None = None
    error: str | None = None



@dataclass(frozen=True)
class Postmortem(StoreRow):
    """An incident's post-mortem: requested when it resolved, completed through the form."""

    incident_id: int
    requested_at: datetime
    flow_run_id: str | None = None
    completed_at: datetime | None = None
    completed_by: str | None = None
    root_cause: str | None = None
    lessons: list[dict[str, Any]] | None = None
    markdown: str | None = None
    last_reminded_at: datetime | None = None



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
