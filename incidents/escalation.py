"""When to escalate and when to post a Status Update: pure functions of an incident, its
severity's policy and a clock, so they can be tested at any moment without waiting.

Escalation: `levels[0]` of the severity's policy is paged when the incident opens. Each full
response time that passes without an acknowledgment (an approval decided, or an explicit
acknowledge) moves the incident one level further, up to the last level. A sweep that ran
late goes straight to the level that is due. Acknowledged or resolved incidents stay where
they are.

Status cadence: while an incident is open, a Status Update is due when `status_minutes` have
passed since the last one (a phase change counts as one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from incidents.config import Roles, SeverityPolicy
from incidents.models import Incident


@dataclass(frozen=True)
class Escalation:
    level: int
    contacts: list[str]
    overdue: timedelta  # how long the incident has gone unacknowledged


def level_contacts(roles: Roles, policy: SeverityPolicy, level: int) -> list[str]:
    """The handles paged at `level` (an empty list means: issue only)."""
    level = min(level, len(policy.levels) - 1)
    handles: list[str] = []
    for reference in policy.levels[level]:
        handles += roles.resolve(reference)
    return list(dict.fromkeys(handles))


def due_level(incident: Incident, policy: SeverityPolicy, now: datetime) -> int:
    if incident.acknowledged_at is not None or incident.resolved_at is not None:
        return incident.escalation_level
    elapsed = now - incident.opened_at
    steps = int(elapsed / timedelta(minutes=policy.response_minutes)) if elapsed > timedelta(0) else 0
    return max(incident.escalation_level, min(steps, len(policy.levels) - 1))


def escalation_due(incident: Incident, roles: Roles, policy: SeverityPolicy, now: datetime) -> Escalation | None:
    """The escalation a sweep at `now` must perform, or None."""
    level = due_level(incident, policy, now)
    if level <= incident.escalation_level:
        return None
    return Escalation(level, level_contacts(roles, policy, level), now - incident.opened_at)


def status_update_due(incident: Incident, policy: SeverityPolicy, now: datetime) -> bool:
    if incident.resolved_at is not None:
        return False
    last = incident.last_update_at or incident.opened_at
    return now - last >= timedelta(minutes=policy.status_minutes)


def next_update(incident: Incident, policy: SeverityPolicy, now: datetime) -> datetime:
    return now + timedelta(minutes=policy.status_minutes)
