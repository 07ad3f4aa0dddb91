"""Severity, incident status and the incident record, as the playbook defines them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Any


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
    detected_by: str = "runbook"
    github_repo: str | None = None
    github_issue: int | None = None
    issue_url: str | None = None
    flow_run_id: str | None = None
    alert: dict[str, Any] | None = None
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

    @property
    def issue_ref(self) -> str:
        return f"#{self.github_issue}" if self.github_issue else "(no issue yet)"


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime
    actor: str
    kind: str
    message: str
    data: dict[str, Any]
