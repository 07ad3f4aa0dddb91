"""The playbook's incident roles, per incident: hand-overs, the scribe's notes and the
commander's severity call. Each change is a timeline entry, a message in the incident's Slack
thread, and the issue rewritten."""

from __future__ import annotations

import re

from incidents import templates
from incidents.config_people import HANDLE, INCIDENT_ROLES, ROLE_TITLES
from incidents.errors import RunbookError
from incidents.models import EventKind, Severity
from incidents.timeline_payloads import RoleChange, SeverityChange
from tasks.context import RunContext
from tasks.correlation import added_contacts
from tasks.notify import refresh_issue, send_slack
from tasks.paging import mentions, trigger_pagers
from tasks.timeline import record

_HANDLE = re.compile(HANDLE)


class RoleError(RunbookError, ValueError):
    """A hand-over or note that cannot be made (unknown role, bad handle, closed incident)."""


def hand_over(ctx: RunContext, incident_id: int, role: str, handle: str, by: str) -> str:
    """`handle` takes `role` (commander, comms, owner, scribe) for the incident; says what changed."""
    if role not in INCIDENT_ROLES:
        raise RoleError(f"unknown role {role!r}: one of {', '.join(INCIDENT_ROLES)}")
    handle = handle.strip()
    if not _HANDLE.match(handle):
        raise RoleError(f"{handle!r} is not a handle (@name or @org/team)")
    handle = "@" + handle.lstrip("@")
    store = ctx.store()
    if store.get(incident_id).resolved_at is not None:
        raise RoleError(f"incident {incident_id} is resolved: its roles are history")
    roles = ctx.config.roles
    before = store.assign_role(incident_id, role, handle, by) or roles.holder(role)
    title = ROLE_TITLES[role]
    said = f"{title} handed over from {before} to {handle} by {by}"
    record(ctx, incident_id, by, EventKind.ROLE_ASSIGNED, said, RoleChange(role=role, before=before, to=handle))
    send_slack(ctx, incident_id, f"👤 {title}: {roles.mention(handle)} takes over from {roles.mention(before)} "
                                 f"(handed over by {by})")
    refresh_issue(ctx, incident_id)
    return said


def add_note(ctx: RunContext, incident_id: int, text: str, by: str) -> str:
    """A note for the timeline (and so the post-mortem), echoed in the thread."""
    text = " ".join(text.split())
    if not text:
        raise RoleError("write the note after the incident's id")
    record(ctx, incident_id, by, EventKind.NOTE, f"Note by {by}: {text[:1000]}")
    # Slack's escaped command text turns "@channel" into <!channel>: a note must not ring anyone
    send_slack(ctx, incident_id, f"📝 Note by {by}: {templates.slack_text(text, 1000)}")
    refresh_issue(ctx, incident_id)
    return f"noted on incident {incident_id}"


def set_severity(ctx: RunContext, incident_id: int, severity: str, by: str) -> str:
    """A person's severity call (up or down): the timeline, the thread (paging whom the new
    severity adds), the issue's title and labels, and the pagers of a raised severity."""
    if severity not in Severity.__members__:
        raise RoleError(f"{severity!r} is not a severity: one of {', '.join(Severity.__members__)}")
    new = Severity(severity)
    store = ctx.store()
    before = store.set_severity(incident_id, new)
    incident = store.get(incident_id)
    if before is None:
        raise RoleError(f"incident {incident_id} is resolved" if incident.resolved_at
                        else f"incident {incident_id} is {new.value} already")
    raised = new < before  # P0 < P1: more severe
    paged = added_contacts(ctx, before, new) if raised else []
    said = f"Severity {'raised' if raised else 'lowered'} from {before.value} to {new.value} by {by}"
    record(ctx, incident_id, by, EventKind.SEVERITY_CHANGED, said,
           SeverityChange(before=before, to=new, paged=paged))
    note = said + "." + (" ⏫ Paging the severity's contacts." if paged else "")
    send_slack(ctx, incident_id, templates.status_update(incident, incident.status.value,
                                                         incident.eta or "being assessed",
                                                         incident.impact or "being assessed", note,
                                                         paging=mentions(ctx, paged)))
    refresh_issue(ctx, incident_id)
    if raised:
        trigger_pagers(ctx, incident, 0)
    return said
