"""The playbook's Communication Templates and Incident Issue Template, rendered from an
incident. Text that came from outside (alert summaries, log lines) is redacted, then escaped
(redaction first: a secret with an `_` in it would no longer match once escaped as `\\_`), so
it can neither leak a credential, mention a whole channel nor inject markdown."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from incidents.models import Incident, TimelineEvent
from incidents.redaction import redact

_MASS_MENTION = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_MENTION = re.compile(r"@(?=[A-Za-z0-9])")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_ZWSP = "\u200b"


def _one_line(text: Any, limit: int) -> str:
    """Redacted before it is cut, so a cut can never leave part of a secret standing."""
    flat = " ".join(redact(str(text if text is not None else "")).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def slack_text(text: Any, limit: int = 300) -> str:
    """Outside text made safe for Slack mrkdwn: no <!channel>-style commands, no @here."""
    flat = _one_line(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MASS_MENTION.sub(lambda m: "@" + _ZWSP + m[1], flat)


def markdown_text(text: Any, limit: int = 300) -> str:
    """Outside text made safe for GitHub markdown: no markup, no @mentions, no #refs."""
    flat = _MD_SPECIAL.sub(r"\\\1", _one_line(text, limit)).replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@" + _ZWSP, flat)


def markdown_code(text: str, limit: int = 4000) -> str:
    """A fenced block for log excerpts; a fence inside the text cannot close it."""
    body = redact(text)[-limit:].replace("```", "`\u200b``")
    body = _MENTION.sub("@" + _ZWSP, body)
    return f"```text\n{body}\n```"


def stamp(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def initial_alert(incident: Incident, summary: str, eta: str = "under investigation", paged: Sequence[str] = (),
                  commander: str | None = None) -> str:
    lines = [
        "🚨 INCIDENT ALERT",
        f"Severity: {incident.severity.value}",
        f"Service: {slack_text(incident.service)}",
        f"Issue: {incident.issue_ref}",
        "Status: Investigating",
        f"ETA: {slack_text(eta)}",
        f"Summary: {slack_text(summary)}",
    ]
    if commander:
        lines.append(f"Incident Commander: {commander}")
    lines.append(f"Paging: {' '.join(paged)}" if paged else "Paging: nobody (issue only, normal process)")
    return "\n".join(lines)


def status_update(incident: Incident, status: str, eta: str, impact: str, note: str | None = None,
                  paging: Sequence[str] = ()) -> str:
    """`paging` holds mentions rendered from the config (`Roles.mentions`), never outside text."""
    lines = ["📊 INCIDENT UPDATE", f"Issue: {incident.issue_ref}", f"Status: {status}",
             f"ETA: {slack_text(eta)}", f"Impact: {slack_text(impact)}"]
    if note:
        lines.append(f"Note: {slack_text(note, 600)}")
    if paging:
        lines.append(f"Paging: {' '.join(paging)}")
    return "\n".join(lines)


_PARENT_LINE = re.compile(r"^(Severity|Status|Incident Commander): .*$", re.MULTILINE)


def thread_parent(parent: str, incident: Incident, commander: str | None = None) -> str:
    """The thread's parent message (the Initial Alert) showing the incident's current severity,
    status (and who acknowledged it) and commander (`commander`: a mention from the config);
    the rest stays as first posted."""
    status = "✅ Resolved" if incident.resolved_at else incident.status.value
    if incident.acknowledged_by and not incident.resolved_at:
        status += f" (acknowledged by {slack_text(incident.acknowledged_by, 100)})"
    current = {"Severity": incident.severity.value, "Status": status}
    if commander:
        current["Incident Commander"] = commander
    return _PARENT_LINE.sub(lambda m: f"{m[1]}: {current.get(m[1], m[0].partition(': ')[2])}", parent)


# The incident's own buttons, on its thread's parent message (deployments/slack_interactions.py).
ACK_ACTION, RESOLVE_ACTION = "runbooks_ack", "runbooks_resolve"


def incident_buttons(incident: Incident) -> list[dict[str, Any]]:
    """Acknowledge (until someone has) and Resolve (until it is), valued with the incident's id."""
    if incident.resolved_at:
        return []
    buttons = [] if incident.acknowledged_at else [
        {"type": "button", "action_id": ACK_ACTION, "value": str(incident.id),
         "text": {"type": "plain_text", "text": "Acknowledge"}}]
    return buttons + [{"type": "button", "action_id": RESOLVE_ACTION, "value": str(incident.id),
                       "text": {"type": "plain_text", "text": "Resolve…"}}]


def with_buttons(blocks: list[dict[str, Any]], buttons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`blocks` with `buttons` added to its actions block (or a new one)."""
    if not buttons:
        return blocks
    for n, block in enumerate(blocks):
        if block.get("type") == "actions" and block.get("block_id") == "runbooks_actions":
            return [*blocks[:n], {**block, "elements": [*block["elements"], *buttons]}, *blocks[n + 1:]]
    return [*blocks, {"type": "actions", "block_id": "runbooks_actions", "elements": buttons}]


RESOLVE_CALLBACK = "runbooks_resolve"


def resolve_modal(incident: Incident) -> dict[str, Any]:
    """The Resolve button's modal (views.open): how it was resolved, in the resolver's words."""
    return {
        "type": "modal", "callback_id": RESOLVE_CALLBACK, "private_metadata": str(incident.id),
        "title": {"type": "plain_text", "text": f"Resolve incident {incident.id}"[:24]},
        "submit": {"type": "plain_text", "text": "Resolve"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": (
                f"*{slack_text(incident.service, 60)}* ({incident.severity.value}): {slack_text(incident.title, 200)}."
                " The Resolution goes to the thread and the issue, and the post-mortem starts.")}},
            {"type": "input", "block_id": "resolution", "label": {"type": "plain_text", "text": "How was it resolved?"},
             "element": {"type": "plain_text_input", "action_id": "note", "multiline": True, "min_length": 3,
                         "max_length": 1000}},
        ],
    }


def approval_buttons(token: str, severity: str) -> list[dict[str, Any]]:
    """Approve and Decline for a Slack app's approval message; the value is the approval's
    token, and Slack asks the presser to confirm an approval (Block Kit confirm object)."""
    confirm = {"title": {"type": "plain_text", "text": "Run this plan?"},
               "text": {"type": "plain_text", "text": f"The plan runs as shown, on your name ({severity})."},
               "confirm": {"type": "plain_text", "text": "Approve"}, "deny": {"type": "plain_text", "text": "Cancel"}}
    return [{"type": "button", "action_id": "runbooks_approve", "style": "primary", "value": token,
             "text": {"type": "plain_text", "text": "Approve"}, "confirm": confirm},
            {"type": "button", "action_id": "runbooks_decline", "style": "danger", "value": token,
             "text": {"type": "plain_text", "text": "Decline"}}]


def resolution(incident: Incident, root_cause: str, what_was_done: str, prevention: str) -> str:
    return "\n".join([
        "✅ INCIDENT RESOLVED",
        f"Issue: {incident.issue_ref}",
        f"Root Cause: {slack_text(root_cause, 500)}",
        f"Resolution: {slack_text(what_was_done, 500)}",
        f"Prevention: {slack_text(prevention, 500)}",
    ])


def slack_blocks(
    text: str, link: tuple[str, str] | None = None, buttons: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Block Kit for a template message: a header line, the rest as a section, and an actions
    block with the link and any interactive buttons (Block Kit limits: header 150 characters,
    section 3000, button label 75)."""
    head, _, rest = text.partition("\n")
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": head[:150]}}]
    if rest:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": rest[:3000]}})
    elements = list(buttons or [])
    if link:
        label, url = link
        elements.append({"type": "button", "action_id": "runbooks_link", "text": {"type": "plain_text",
                                                                                   "text": label[:75]}, "url": url})
    if elements:
        blocks.append({"type": "actions", "block_id": "runbooks_actions", "elements": elements})
    return blocks


def issue_title_text(service: str, severity: Any, summary: str) -> str:
    value = getattr(severity, "value", severity)
    return f"[{value}] {_one_line(service, 60)}: {_one_line(summary, 120)}"


def issue_title(incident: Incident, summary: str) -> str:
    return issue_title_text(incident.service, incident.severity, summary)


def resolution_markdown(root_cause: str, what_was_done: str, prevention: str) -> str:
    return (
        f"### ✅ Incident resolved\n\n**Root Cause:** {markdown_text(root_cause, 500)}\n\n"
        f"**Resolution:** {markdown_text(what_was_done, 500)}\n\n**Prevention:** {markdown_text(prevention, 500)}\n"
    )


# The timeline entries an issue's reader needs (the rest is in `runbooks incident N`).
KEY_MOMENTS = frozenset({"detected", "acknowledged", "escalated", "diagnosed", "approval_approved",
                         "approval_declined", "approval_timed_out", "action", "action_failed", "recovered",
                         "resolved", "resolved_by_hand", "cancelled", "role_assigned", "note",
                         "severity_changed", "commander_asked", "summary_sent"})
SEVERITY_LABELS = frozenset({"P0", "P1", "P2", "P3", "priority:high"})


def key_moments(events: Sequence[TimelineEvent]) -> list[tuple[datetime, str, str]]:
    """(when, kind, what) of the timeline entries the issue shows: KEY_MOMENTS, and an alert
    that joined and raised the severity."""
    from incidents.timeline_payloads import AlertJoined  # it imports plans, which import this module
    return [(e.at, str(e.kind), e.message) for e in events
            if str(e.kind) in KEY_MOMENTS or (isinstance(e.data, AlertJoined) and e.data.raised_from)]


def summary_of(title: str) -> str:
    """The summary an issue title (`[P1] api: summary`) was made from."""
    return title.split(": ", 1)[1] if title.startswith("[") and ": " in title else title


def duration_text(incident: Incident, now: datetime) -> str:
    began = incident.started_at or incident.opened_at
    end = incident.resolved_at or now
    minutes = max(0, int((end - began).total_seconds() // 60))
    said = f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes} min"
    return said if incident.resolved_at else f"ongoing ({said} so far)"


def issue_body(incident: Incident, summary: str, roles: list[tuple[str, str, str]], policy: Any,
               impact: str = "Being assessed", moments: Sequence[tuple[datetime, str, str]] = (),
               now: datetime | None = None) -> str:
    """The playbook's Incident Issue Template, filled with what the record knows: written when
    the incident opens, and again in place as its status, severity and roles change, so the
    issue tells what the store knows (`moments`: the timeline's key entries, oldest first, as
    (when, kind, what))."""
    alert_line = ""
    if incident.alert:
        name = incident.alert.name
        alert_line = f"\n**Alert:** {markdown_text(name or 'external alert')}"
    role_rows = "\n".join(f"| {role} | {contact} | {backup or '-'} |" for role, contact, backup in roles)
    commander = next((contact for role, contact, _ in roles if role.lower().startswith("incident commander")), "-")
    resolved = f"\n**Resolved:** {stamp(incident.resolved_at)}" if incident.resolved_at else ""
    timeline = "\n".join(f"- **{stamp(at)}** - {markdown_text(what, 200)}" for at, _, what in moments) or (
        f"- **{stamp(incident.opened_at)}** - Incident detected\n- **{stamp(incident.opened_at)}** - "
        "Investigation started")
    actions = [f"- [{'x' if kind == 'action' else ' '}] {markdown_text(what, 200)}" for _, kind, what in moments
               if kind in ("action", "action_failed")]
    return f"""## 🚨 Incident Report

**Severity:** {incident.severity.value} ({incident.severity.label})
**Service:** {markdown_text(incident.service)} ({markdown_text(incident.environment)})
**Start Time:** {stamp(incident.opened_at)}
**Detected By:** {markdown_text(incident.detected_by)}
**Status:** {incident.status.value}{resolved}
**Commander:** {commander}{alert_line}

**Summary:** {markdown_text(summary)}

### 📊 Impact
- **Users Affected:** {markdown_text(incident.users_affected or impact)}
- **Duration:** {duration_text(incident, now or incident.opened_at)}
- **Business Impact:** {markdown_text(incident.impact or impact)}

### Timeline
{timeline}

### Actions Taken
{chr(10).join(actions) or "- [ ] Diagnosis (report follows as a comment)"}

### Root Cause
{markdown_text(incident.root_cause, 500) if incident.root_cause else "To be determined."}

### Lessons Learned
To be written in the post-mortem.

### 🚀 Action Items
- [ ] To be filed after the post-mortem

### Roles
| Role | Contact | Backup |
|------|---------|--------|
{role_rows}

_Escalation for {incident.severity.value}: acknowledge within {policy.response_minutes:g} min ({incident.severity.escalation}); unacknowledged, it escalates level by level. Status Updates every {policy.status_minutes:g} min while open._
"""  # noqa: E501 - the issue body is Markdown; its lines are as long as they read


def _plain_duration(start: datetime | None, end: datetime | None) -> str:
    if not start or not end:
        return "ongoing"
    minutes = max(0, int((end - start).total_seconds() // 60))
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def stakeholder_update(incident: Incident, comms: str, next_at: datetime) -> str:
    """A draft for people outside the team (no runbook jargon), for the Communications lead to
    send on; `comms` is their mention from the config."""
    impact = slack_text(incident.impact or incident.users_affected or "being assessed")
    return "\n".join([
        "📣 STAKEHOLDER UPDATE (draft)",
        f"For: {comms} - edit and send to stakeholders; nothing has been sent.",
        f"We are working on a problem with {slack_text(incident.service, 60)} ({incident.severity.label} priority).",
        f"What you may notice: {impact}.",
        f"Where we are: {incident.status.value}; ETA: {slack_text(incident.eta or 'being assessed')}.",
        f"Next update by {next_at:%H:%M} UTC.",
    ])


def summary_24h(incident: Incident, comms: str, moments: Sequence[TimelineEvent], due: datetime) -> str:
    """The playbook's "Immediate (within 24h)" summary, drafted from the record for the
    Communications lead: timeline, root cause, impact, and a public statement to adapt."""
    lines = [
        "📋 24-HOUR SUMMARY (draft)",
        f"Issue: {incident.issue_ref}",
        f"For: {comms} - check it, send it to stakeholders by {due:%Y-%m-%d %H:%M} UTC, then "
        f"`/incident summary {incident.id} sent`.",
        f"Duration: {_plain_duration(incident.started_at or incident.opened_at, incident.resolved_at)}",
        f"Root cause: {slack_text(incident.root_cause or 'to be worked out in the post-mortem', 500)}",
        f"Resolution: {slack_text(incident.resolution or '-', 500)}",
        f"Impact: {slack_text(incident.impact or incident.users_affected or 'being assessed', 300)}",
        "Timeline:",
        *[f"• {e.at:%H:%M} {slack_text(e.message, 160)}" for e in moments[-12:]],
        "Public statement (draft): "
        f"Between {(incident.started_at or incident.opened_at):%H:%M} and "
        f"{(incident.resolved_at or incident.opened_at):%H:%M} UTC, {slack_text(incident.service, 60)} was degraded. "
        "The problem is fixed, and we are reviewing how to prevent it.",
    ]
    return "\n".join(lines)
