"""The incident timeline: every step appends who did what, when."""

from __future__ import annotations

import logging

from incidents.models import EventKind
from incidents.redaction import redact
from incidents.store import StoreError
from incidents.timeline_payloads import Payload
from tasks import telemetry
from tasks.context import RunContext

_log = logging.getLogger("runbooks.timeline")


def record(ctx: RunContext, incident_id: int, actor: str, kind: EventKind, message: str,
           data: Payload | None = None) -> bool:
    """Append to the timeline, and tell the transitions as Prefect events (tasks/telemetry.py).
    A store outage is logged, not raised: it must not stop a remediation."""
    try:
        ctx.store().add_event(incident_id, actor, kind, message, data)  # the store redacts
    except StoreError as exc:
        _log.error("timeline entry lost (%s: %s): %s", kind, redact(message), exc)
        return False
    if kind == EventKind.NOTIFICATION_FAILED:
        telemetry.notification_failed(message)
    elif telemetry.tells(kind):
        _tell(ctx, incident_id, actor, kind, data)
    return True


def _tell(ctx: RunContext, incident_id: int, actor: str, kind: EventKind, data: Payload | None) -> None:
    """The event of a transition carries the incident's service, severity and scenario as they are now."""
    try:
        incident = ctx.store().get(incident_id)
    except StoreError as exc:
        _log.warning("event for %s of incident %s not emitted: %s", kind, incident_id, exc)
        return
    telemetry.timeline_entry(incident, kind, actor, data)
