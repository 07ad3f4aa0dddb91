"""The post-mortem, built from the incident record: the key moments of the Incident Timeline,
the impact, the actions taken with their approvals, and the people's answers, rendered in
the playbook's Incident Issue Template form."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from incidents.followup_models import ActionItemRecord, Lesson
from incidents.models import Approval, EventKind, Incident, TimelineEvent
from incidents.templates import markdown_text, stamp

HORIZONS = {"24h": timedelta(hours=24), "1w": timedelta(days=7)}  # the playbook's Immediate / Follow-up

# (label, timeline kinds that mark it); the first event of any of the kinds wins
_MOMENTS = [
    ("Investigation started", (EventKind.INVESTIGATING,)),
    ("Root cause identified", (EventKind.DIAGNOSED,)),
    ("Fix implemented", (EventKind.ACTION,)),
    ("Service restored", (EventKind.RECOVERED,)),
]

_ACTIONS_TAKEN = (EventKind.ACTION, EventKind.ACTION_FAILED, EventKind.ESCALATED, EventKind.ACKNOWLEDGED,
                  EventKind.RESOLVED)


@dataclass(frozen=True)
class Moment:
    label: str
    at: datetime | None
    detail: str = ""


def key_moments(incident: Incident, events: list[TimelineEvent]) -> list[Moment]:
    """Detection, investigation, root cause, fix and restoration, with their times (None when
    the record has no such moment, e.g. no fix for an incident a person resolved by hand)."""
    moments = []
    if incident.started_at and incident.started_at < incident.opened_at:
        moments.append(Moment("Problem began (alert start)", incident.started_at))
    moments.append(Moment("Incident detected", incident.opened_at, f"by {incident.detected_by}"))
    for label, kinds in _MOMENTS:
        event = next((e for e in events if e.kind in kinds), None)
        at = event.at if event else None
        if label == "Service restored" and at is None:
            at = incident.recovered_at
        moments.append(Moment(label, at, event.message if event else ""))
    return moments


def duration(incident: Incident) -> timedelta | None:
    start = incident.started_at or incident.opened_at
    end = incident.recovered_at or incident.resolved_at
    return end - start if end else None


def human(delta: timedelta | None) -> str:
    if delta is None:
        return "ongoing"
    minutes = int(delta.total_seconds() // 60)
    seconds = int(delta.total_seconds() % 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min {seconds} s"


def actions_taken(events: list[TimelineEvent], approvals: list[Approval]) -> list[str]:
    """Every action the record shows, and every approval decision, as checklist lines in time order."""
    lines: list[tuple[datetime, str]] = []
    for approval in approvals:
        decision = approval.decision or "pending"
        who = approval.approver or "nobody"
        auto = " (automatic, drill)" if approval.automatic else ""
        steps = "; ".join(f"{a.kind} {a.target}: {a.before} -> {a.after}" for a in approval.plan.actions)
        reason = f": {markdown_text(approval.reason, 200)}" if approval.reason else ""
        at = approval.decided_at or approval.requested_at
        lines.append((at, f"- [x] {stamp(at)} plan {decision} by {markdown_text(who)}{auto}{reason} "
                          f"({markdown_text(steps, 400)})"))
    for event in events:
        if event.kind in _ACTIONS_TAKEN:
            done = "x" if event.kind != "action_failed" else " "
            lines.append((event.at, f"- [{done}] {stamp(event.at)} {markdown_text(event.message, 400)} "
                                    f"({markdown_text(event.actor, 80)})"))
    return [line for _, line in sorted(lines, key=lambda pair: pair[0])]


class Answers(BaseModel):
    """What the post-mortem form adds to the record (tasks/postmortem.py's form gives it)."""

    model_config = ConfigDict(frozen=True)

    root_cause: str = ""
    users_affected: str = ""
    business_impact: str = ""
    what_went_well: str = ""
    what_went_badly: str = ""
    lessons: list[Lesson] = []


def _lesson_lines(lessons: list[Lesson]) -> str:
    def line(lesson: Lesson) -> str:
        text = f"- {markdown_text(lesson.lesson, 600)}"
        if not lesson.playbook_change:
            return text
        section = f": {markdown_text(lesson.playbook_section, 80)}" if lesson.playbook_section else ""
        return f"{text} _(proposed playbook change{section})_"

    return "\n".join(line(lesson) for lesson in lessons)


def _item_lines(items: list[ActionItemRecord]) -> str:
    return "\n".join(
        f"- [{'x' if i.completed_at else ' '}] {markdown_text(i.title, 200)} — "
        f"{markdown_text(i.owner or 'unassigned', 60)}, due {stamp(i.due_at)} ({i.horizon})"
        + (f" {i.repo}#{i.issue_number}" if i.issue_number else "") for i in items) or "- (none)"


def render(incident: Incident, events: list[TimelineEvent], approvals: list[Approval], answers: Answers,
           items: list[ActionItemRecord]) -> str:
    """The post-mortem in the Incident Issue Template's form."""
    moments = key_moments(incident, events)
    timeline = "\n".join(f"- **{stamp(m.at) if m.at else 'n/a'}** - {m.label}"
                         + (f" ({markdown_text(m.detail, 160)})" if m.detail else "") for m in moments)
    actions = "\n".join(actions_taken(events, approvals)) or "- (no actions recorded)"
    lesson_lines = _lesson_lines(answers.lessons)
    went = [("What went well", answers.what_went_well), ("What did not", answers.what_went_badly)]
    went_lines = "\n".join(f"**{title}:** {markdown_text(text, 1500)}" for title, text in went if text)
    item_lines = _item_lines(items)
    notes = "\n".join(f"- **{stamp(e.at)}** - {markdown_text(e.message, 1000)}" for e in events
                      if e.kind == "note") or "- (none)"
    return f"""## 🚨 Incident Report (post-mortem)

**Severity:** {incident.severity.value} ({incident.severity.label})
**Service:** {markdown_text(incident.service)} ({markdown_text(incident.environment)})
**Start Time:** {stamp(incident.started_at or incident.opened_at)}
**Detected By:** {markdown_text(incident.detected_by)}
**Status:** Resolved
**Incident issue:** {incident.issue_ref}

### 📊 Impact
- **Users Affected:** {markdown_text(answers.users_affected or incident.users_affected or 'unknown', 300)}
- **Duration:** {human(duration(incident))}
- **Business Impact:** {markdown_text(answers.business_impact or incident.impact or 'not assessed', 600)}

### Timeline
{timeline}

### Actions Taken
{actions}

### Notes (the scribe's and others', as written during the incident)
{notes}

### Root Cause
{markdown_text(answers.root_cause or incident.root_cause or 'not determined', 3000)}

### Lessons Learned
{went_lines}
{lesson_lines or '- (none recorded)'}

### 🚀 Action Items
{item_lines}
"""


def due_at(horizon: str, since: datetime) -> datetime:
    return since + HORIZONS[horizon]
