"""One outage, one incident. What happens when an alert (or a run) meets an incident that is
already open for its correlation key, and when the alerts of an incident resolve:

- a firing alert **joins**: a timeline entry, and a Status Update in the incident's channel
  when it says something new (a second symptom, a flap); never a second issue, Initial Alert
  or page. A replica's copy or a resend is a timeline entry only.
- a more severe alert **raises** the incident's severity and pages whom the new severity adds
  (per the escalation matrix); a less severe one changes nothing but the timeline.
- a resolved alert is noted; once every alert of the incident has stayed resolved for the
  grace (`intake.resolve_grace_seconds`), a pending approval is **withdrawn** by the intake
  (and, should the intake have restarted meanwhile, by the incident watch).

Plain functions (not Prefect tasks): the intake calls them outside any flow run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from incidents import templates
from incidents.alerts import WITHDRAWN_REASON, AlertParameter
from incidents.escalation import level_contacts
from incidents.models import EventKind, Incident, Severity
from incidents.store_protocol import Records
from incidents.timeline_payloads import AlertCleared, AlertJoined, AlertSeen
from tasks.approval import ApprovalInput
from tasks.context import RunContext
from tasks.notify import add_comment, refresh_issue, send_slack
from tasks.paging import mentions, trigger_pagers
from tasks.timeline import record

_log = logging.getLogger("runbooks.correlation")
WITHDRAWER = "runbooks intake: alert resolved"  # no parentheses: the form refuses them in names


@dataclass(frozen=True)
class Joined:
    incident: Incident
    seen: str                      # new | refired | repeat | run
    raised_from: Severity | None   # the severity before this alert raised it
    paged: tuple[str, ...]         # whom the raise paged in addition


def note_alert(ctx: RunContext, incident: Incident, alert: AlertParameter | None) -> str:
    """Record that `alert` fires for `incident`: 'new', 'refired' (after resolving: a flap) or 'repeat'."""
    if alert is None or not alert.fingerprint:
        return "run"
    identity, starts_at = alert.identity
    return ctx.store().record_alert(incident.id, identity, alert.name or "alert", alert.labels.get("severity"),
                                    starts_at)


def detected(ctx: RunContext, incident: Incident, by: str, what: str, alert: AlertParameter | None) -> None:
    """The first entries of a new incident: what detected it, and its alert (if any)."""
    record(ctx, incident.id, by, EventKind.DETECTED, what, AlertSeen(alert=alert) if alert else AlertSeen())
    note_alert(ctx, incident, alert)


def added_contacts(ctx: RunContext, before: Severity, after: Severity) -> list[str]:
    """Who the escalation matrix pages at `after` (level 0) that it did not page at `before`."""
    roles, matrix = ctx.config.roles, ctx.config.escalation
    already = set(level_contacts(roles, matrix.policy(before), 0))
    return [c for c in level_contacts(roles, matrix.policy(after), 0) if c not in already]


def join(ctx: RunContext, incident: Incident, alert: AlertParameter | None, severity: Severity | None, by: str,
         flow_run_id: str | None = None) -> Joined:
    """`alert` (or a run, when None) joins the open `incident`; `flow_run_id` is the joining run's
    (the store finds the incident of a run by it, e.g. for what its Cancel records)."""
    store = ctx.store()
    seen = note_alert(ctx, incident, alert)
    raised_from = store.raise_severity(incident.id, severity) if severity else None
    paged: list[str] = []
    if raised_from is not None and severity is not None:
        incident.severity = severity
        paged = added_contacts(ctx, raised_from, severity)
    name = (alert.name if alert else None) or by
    message = {
        "new": f"{name} also fires: it joined incident {incident.id} (same outage)",
        "refired": f"{name} fired again after it had resolved (a flap): incident {incident.id} continues",
        "repeat": f"{name} sent again (a replica's copy or a resend)",
        "run": f"{by} joined incident {incident.id}, which is already open",
    }[seen]
    if alert is not None and alert.source == "slack":  # a person's /incident declare, not an alert
        declarer = alert.annotations.get("declared_by", "someone")
        if by != "slack":  # the run a joining declaration started
            message = f"{by} joined incident {incident.id} (declared by {declarer}), which is already open"
        elif seen == "repeat":
            message = f"{declarer} declared it again"
        else:
            message = f"{declarer} declared the same outage in Slack: it joined incident {incident.id}"
    if raised_from is not None:
        message += f"; severity raised from {raised_from.value} to {incident.severity.value}"
    record(ctx, incident.id, by, EventKind.FLAP if seen == "refired" else EventKind.JOINED, message,
           AlertJoined(alert=alert, seen=seen, raised_from=raised_from, paged=paged, flow_run_id=flow_run_id))
    if incident.announced_at is not None and (seen in ("new", "refired") or raised_from is not None):
        note = message + "." + (" ⏫ Paging the severity's contacts." if paged else "")
        send_slack(ctx, incident.id, templates.status_update(incident, incident.status.value,
                                                             incident.eta or "being assessed",
                                                             incident.impact or "being assessed", note,
                                                             paging=mentions(ctx, paged)))
        if raised_from is not None:
            add_comment(ctx, incident.id, incident.github_repo, incident.github_issue,
                        f"### ⏫ Severity raised from {raised_from.value} to {incident.severity.value}\n\n"
                        f"{templates.markdown_text(message, 600)}\n\nPaged: {' '.join(paged) or 'nobody new'}")
    if raised_from is not None and incident.announced_at is not None:
        refresh_issue(ctx, incident.id)  # the title, labels and body say the new severity
        trigger_pagers(ctx, incident, 0)  # the new severity's pagers (one PagerDuty alert: the same dedup_key)
    return Joined(incident, seen, raised_from, tuple(paged))


def alert_resolved(ctx: RunContext, incident: Incident, alert: AlertParameter, grace_seconds: float) -> bool:
    """An alert of `incident` resolved at its source: noted on the timeline (no message yet:
    a flap would make it noise). False when it was not firing for this incident."""
    identity, _ = alert.identity
    if not ctx.store().resolve_alert(incident.id, identity):
        return False
    name = alert.name or "alert"
    record(ctx, incident.id, alert.source or "alert", EventKind.ALERT_RESOLVED,
           f"{name} resolved at its source; a pending approval is withdrawn if every alert of the incident stays "
           f"resolved for {grace_seconds:g} s", AlertCleared(identity=identity))
    return True


def withdraw_quiet(store: Records, environment: str | None, grace_seconds: float, now: datetime,
                   resume: Callable[[str, ApprovalInput], bool]) -> list[int]:
    """Withdraw the pending approvals of incidents whose alerts all resolved and stayed resolved
    for the grace. The store takes the decision first (once, whoever sweeps); `resume` then
    wakes the waiting run with a decline, which the run reads from the store as a withdrawal
    (a person's decline, whatever its reason says, stays a decline). Returns the approvals."""
    withdrawn = []
    for approval in store.quiet_approvals(environment, grace_seconds, now):
        if approval.flow_run_id is None or not store.withdraw_approval(approval.id, WITHDRAWER, WITHDRAWN_REASON):
            continue  # (the store lists only approvals of runs; answered meanwhile: not ours to withdraw)
        withdrawn.append(approval.id)
        try:
            resume(approval.flow_run_id, ApprovalInput(approve=False, approver=WITHDRAWER, reason=WITHDRAWN_REASON))
        except Exception as exc:  # noqa: BLE001 - the decision stands; the run reads it when it wakes
            _log.warning("run %s not resumed after its approval was withdrawn: %s", approval.flow_run_id, exc)
    return withdrawn

