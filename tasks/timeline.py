"""The incident timeline: every step appends who did what, when."""

from __future__ import annotations

import logging

from incidents.models import EventKind
from incidents.redaction import redact
from incidents.store import StoreError
from tasks.context import RunContext

_log = logging.getLogger("runbooks.timeline")


def record(ctx: RunContext, incident_id: int, actor: str, kind: EventKind, message: str,
           data: dict | None = None) -> bool:
    """Append to the timeline. A store outage is logged, not raised: it must not stop a remediation."""
    try:
        ctx.store().add_event(incident_id, actor, kind, redact(message), data)
        return True
    except StoreError as exc:
        _log.error("timeline entry lost (%s: %s): %s", kind, message, exc)
        return False
