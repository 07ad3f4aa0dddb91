"""Pages that ring: PagerDuty Events API v2 for the escalation levels that name
`pagerduty.<service>`, and Slack mentions that notify.

One PagerDuty alert per incident: every event carries the incident's `dedup_key`, so a repeated
trigger (a retry, an escalation, a severity raise) collapses into the alert already open, and
acknowledge/resolve reach exactly it. A failure is recorded on the timeline and retried by the
incident watch; it never stops the run. Drills never page PagerDuty.
"""

from __future__ import annotations

import logging
import re

from incidents.models import EventKind, Incident
from incidents.redaction import redact
from incidents.store import StoreError
from incidents.timeline_payloads import PagerStep
from integrations.errors import IntegrationError
from tasks.context import RunContext, SecretNotFound, resolve_secret
from tasks.timeline import record

PAGERDUTY_SEVERITY = {"P0": "critical", "P1": "error", "P2": "warning", "P3": "info"}
_KEY = re.compile(r"^runbooks/(?P<environment>[A-Za-z0-9_.-]{1,100})/incident-(?P<id>\d{1,18})$")
_ERRORS = (IntegrationError, SecretNotFound, StoreError, ValueError)
_log = logging.getLogger("runbooks.paging")
_PAGED_KIND = {"trigger": EventKind.PAGED, "acknowledge": EventKind.PAGER_ACKNOWLEDGE,
               "resolve": EventKind.PAGER_RESOLVE}


def pager_key(incident: Incident) -> str:
    """The PagerDuty dedup_key of an incident (at most 255 characters, as PagerDuty requires)."""
    return f"runbooks/{incident.environment}/incident-{incident.id}"


def incident_of_key(key: str) -> tuple[str, int] | None:
    """(environment, incident id) named by a dedup_key this project sent; None for any other."""
    match = _KEY.match(key or "")
    return (match["environment"], int(match["id"])) if match else None


def is_drill(incident: Incident) -> bool:
    return incident.alert is not None and incident.alert.drill_id is not None


def mentions(ctx: RunContext, handles: list[str]) -> list[str]:
    """Slack mentions that notify (from the configured IDs) for the people paged."""
    return ctx.config.roles.mentions(handles)


def trigger_pagers(ctx: RunContext, incident: Incident, level: int,
                   logger: logging.Logger | logging.LoggerAdapter = _log) -> list[str]:
    """Trigger the PagerDuty services the severity's escalation `level` names; returns those reached."""
    settings = ctx.config.pagerduty
    if settings is None or is_drill(incident):
        return []
    reached = []
    for name in ctx.config.escalation.policy(incident.severity).pagers(level):
        if _send(ctx, incident, name, "trigger", logger):
            ctx.store().add_pager(incident.id, name)
            reached.append(name)
    return reached


def retrigger_missing(ctx: RunContext, incident: Incident) -> list[str]:
    """The incident watch's retry: trigger every pager due so far that never took the trigger."""
    if ctx.config.pagerduty is None or is_drill(incident) or incident.acknowledged_at or incident.resolved_at:
        return []
    policy = ctx.config.escalation.policy(incident.severity)
    done = set(ctx.store().pagers(incident.id))
    due = {
        p for level in range(min(incident.escalation_level, len(policy.levels) - 1) + 1) for p in policy.pagers(level)
    }
    reached = []
    for name in sorted(due - done):
        if _send(ctx, incident, name, "trigger", _log):
            ctx.store().add_pager(incident.id, name)
            reached.append(name)
    return reached


def update_pagers(ctx: RunContext, incident: Incident, action: str, by: str,
                  logger: logging.Logger | logging.LoggerAdapter = _log) -> list[str]:
    """Send `acknowledge` or `resolve` to every PagerDuty service the incident triggered."""
    if ctx.config.pagerduty is None:
        return []
    try:
        names = ctx.store().pagers(incident.id)
    except StoreError as exc:
        logger.warning("Incident %s: pagers not read, PagerDuty %s not sent: %s", incident.id, action, exc)
        return []
    return [name for name in names if _send(ctx, incident, name, action, logger, by=by)]


def _send(ctx: RunContext, incident: Incident, name: str, action: str,
          logger: logging.Logger | logging.LoggerAdapter, by: str | None = None) -> bool:
    settings = ctx.config.pagerduty
    service = settings.services.get(name) if settings else None
    if service is None:
        return False
    key = pager_key(incident)
    try:
        with ctx.pagerduty() as pagerduty:
            routing_key = resolve_secret(service.routing_key_secret)
            if action == "trigger":
                pagerduty.send(
                    routing_key,
                    "trigger",
                    key,
                    summary=redact(incident.title),
                    source=f"{incident.environment}/{incident.service}",
                    severity=PAGERDUTY_SEVERITY[incident.severity.value],
                    details={"incident": incident.id, "scenario": incident.scenario, "issue": incident.issue_ref},
                    links=[{"href": incident.issue_url, "text": "Incident issue"}] if incident.issue_url else None,
                )
            else:
                pagerduty.send(routing_key, action, key)  # type: ignore[arg-type]
    except _ERRORS as exc:
        logger.warning("Incident %s: PagerDuty %s to %s not delivered: %s", incident.id, action, name, exc)
        record(ctx, incident.id, "runbook", EventKind.NOTIFICATION_FAILED,
               f"PagerDuty {action} to {name} not delivered: {exc}")
        return False
    record(ctx, incident.id, by or "runbook", _PAGED_KIND[action],
           f"PagerDuty {action} sent to {name}", PagerStep(pager=name, dedup_key=key, action=action))
    return True
