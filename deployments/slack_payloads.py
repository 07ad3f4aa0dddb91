"""What the runbooks read from a Slack interaction payload (deployments/slack_interactions.py),
parsed once at the door: an approval button pressed, an incident's Acknowledge or Resolve
pressed, the Resolve form submitted. Anything else in Slack's payload is not read; a payload
that is none of these parses to None and is acknowledged without effect."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Literal

from incidents.config_base import SLACK_USER_ID
from incidents.templates import ACK_ACTION, RESOLVE_ACTION, RESOLVE_CALLBACK

DECISIONS = {"runbooks_approve": "approve", "runbooks_decline": "decline"}
USER_ID = re.compile(SLACK_USER_ID)
# an incident number as the buttons and the form carry it: ASCII digits only (str.isdigit also
# takes "²", which int() refuses), and no longer than the store's bigint
_INCIDENT_ID = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True)
class ApprovalPress:
    """Approve or Decline on an approval request. `blocks` and `text` are the message as Slack
    sent it (the answer replaces it, with who decided)."""

    user: str
    decision: Literal["approve", "decline"]
    token: str
    response_url: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


@dataclass(frozen=True)
class IncidentPress:
    """Acknowledge or Resolve on an incident's parent message: who, which incident, where to answer."""

    user: str
    name: str
    verb: Literal["ack", "resolve"]
    incident_id: int
    trigger_id: str
    response_url: str
    channel: str


@dataclass(frozen=True)
class ResolveSubmission:
    """The Resolve form sent: who, which incident, and how it was resolved (whitespace folded; may be empty)."""

    user: str
    name: str
    incident_id: int
    note: str


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [each for each in value if isinstance(each, dict)] if isinstance(value, list) else []


def _user(payload: dict[str, Any]) -> tuple[str, str] | None:
    user = _dict(payload.get("user"))
    user_id = str(user.get("id") or "")
    return (user_id, str(user.get("name") or "")) if USER_ID.match(user_id) else None


def _action(payload: dict[str, Any], action_ids: Collection[str]) -> dict[str, Any] | None:
    if payload.get("type") != "block_actions":
        return None
    return next((a for a in _dicts(payload.get("actions")) if a.get("action_id") in action_ids), None)


def approval_press(payload: Any) -> ApprovalPress | None:
    payload = _dict(payload)
    action, user = _action(payload, DECISIONS), _user(payload)
    if action is None or user is None:
        return None
    message = _dict(payload.get("message"))
    decision: Literal["approve", "decline"] = "approve" if DECISIONS[action["action_id"]] == "approve" else "decline"
    return ApprovalPress(user=user[0], decision=decision, token=str(action.get("value", "")),
                         response_url=str(payload.get("response_url") or ""),
                         blocks=_dicts(message.get("blocks")), text=str(message.get("text") or ""))


def incident_press(payload: Any) -> IncidentPress | None:
    payload = _dict(payload)
    action, user = _action(payload, (ACK_ACTION, RESOLVE_ACTION)), _user(payload)
    if action is None or user is None or not _INCIDENT_ID.fullmatch(str(action.get("value", ""))):
        return None
    return IncidentPress(user=user[0], name=user[1], verb="ack" if action["action_id"] == ACK_ACTION else "resolve",
                         incident_id=int(action["value"]), trigger_id=str(payload.get("trigger_id") or ""),
                         response_url=str(payload.get("response_url") or ""),
                         channel=str(_dict(payload.get("channel")).get("id") or ""))


def resolve_submission(payload: Any) -> ResolveSubmission | None:
    """The Resolve form's submission; None for any other view, or one not from a Slack member."""
    payload = _dict(payload)
    view, user = _dict(payload.get("view")), _user(payload)
    metadata = str(view.get("private_metadata", ""))
    if payload.get("type") != "view_submission" or view.get("callback_id") != RESOLVE_CALLBACK \
            or not _INCIDENT_ID.fullmatch(metadata) or user is None:
        return None
    values = _dict(_dict(_dict(view.get("state")).get("values")).get("resolution"))
    note = " ".join(str(_dict(values.get("note")).get("value") or "").split())
    return ResolveSubmission(user=user[0], name=user[1], incident_id=int(metadata), note=note)
