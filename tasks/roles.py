"""The playbook's incident roles, per incident: hand-overs and the scribe's notes. Each change
is a timeline entry, a message in the incident's Slack thread, and the issue rewritten."""

from __future__ import annotations

import re

from incidents.config_people import HANDLE, INCIDENT_ROLES, ROLE_TITLES
from incidents.models import EventKind
from tasks.context import RunContext
from tasks.notify import refresh_issue, send_slack
from tasks.timeline import record

_HANDLE = re.compile(HANDLE)


class RoleError(ValueError):
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
    record(ctx, incident_id, by, EventKind.ROLE_ASSIGNED, said, {"role": role, "from": before, "to": handle})
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
    send_slack(ctx, incident_id, f"📝 Note by {by}: {text[:1000]}")
    refresh_issue(ctx, incident_id)
    return f"noted on incident {incident_id}"
