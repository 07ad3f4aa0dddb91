"""Remediation plans and the grants that authorise them.

A plan lists actions, each with its target and its before -> after. The approval gate turns
a decision about one exact plan into a `Grant`, signed with a key the process holds; a
destructive step calls `require_grant` and refuses to run for anything the grant does not
cover. A grant cannot be made up by a caller, widened to another action, or reused for a
changed plan.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from typing import Any, TypeVar

from incidents import action_params
from incidents.action_params import ActionParams
from incidents.errors import RunbookError
from incidents.templates import markdown_text
from incidents.vocabulary import ActionKind, Confidence

_KEY = (os.environ.get("RUNBOOKS_GRANT_KEY") or secrets.token_hex(32)).encode()


P = TypeVar("P", bound=ActionParams)


class NotApproved(RunbookError, PermissionError):
    """A destructive step was called without a grant for exactly that action."""


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True, init=False)
class PlannedAction:
    kind: ActionKind
    target: str  # e.g. "deployment/api (namespace sandbox)"
    before: str
    after: str
    via: str  # how it is done, in the operator's words
    params: ActionParams  # the kind's model (incidents/action_params.py)

    def __init__(self, kind: ActionKind | str, target: str, before: str, after: str, via: str,
                 params: ActionParams | Mapping[str, Any] | None = None) -> None:
        """Text for the kind and a mapping for the parameters (a stored plan, the wire) are read
        into the member and the kind's model here; an unknown kind or a malformed parameter is refused."""
        parsed = ActionKind.parse(kind)
        given = params if isinstance(params, ActionParams) else dict(params or {})
        object.__setattr__(self, "kind", parsed)
        object.__setattr__(self, "target", target)
        object.__setattr__(self, "before", before)
        object.__setattr__(self, "after", after)
        object.__setattr__(self, "via", via)
        object.__setattr__(self, "params", action_params.parse(parsed, given))

    def params_as(self, model: type[P]) -> P:
        """The parameters as the model a remedy expects; a TypeError when the action is of another kind."""
        if not isinstance(self.params, model):
            raise TypeError(f"a {self.kind} action has {type(self.params).__name__} parameters, not {model.__name__}")
        return self.params

    def as_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["params"] = self.params.as_dict()
        return data

    @property
    def digest(self) -> str:
        return _digest(self.as_dict())

    def describe(self) -> str:
        return f"{self.kind} {self.target}: {self.before} -> {self.after} (via {self.via})"


@dataclass(frozen=True)
class Plan:
    incident_id: int
    service: str
    environment: str
    actions: tuple[PlannedAction, ...]
    evidence: tuple[str, ...] = ()
    summary: str = ""
    confidence: Confidence = Confidence.STRONG  # NONE: an abstention, no action
    support: tuple[str, ...] = ()       # the evidence for this choice
    against: tuple[str, ...] = ()       # the evidence against it, or for another cause
    handover: str | None = None         # the scenario that owns the cause found
    scenario: str = ""                  # the scenario whose rule made it (after any handover)

    def __post_init__(self) -> None:
        object.__setattr__(self, "confidence", Confidence.parse(self.confidence))

    @property
    def abstained(self) -> bool:
        return not self.actions and self.confidence is Confidence.NONE

    def judgement_lines(self) -> list[str]:
        """Confidence, and the evidence for and against, as plain lines (Slack, CLI)."""
        lines = [f"Confidence: {self.confidence}"]
        lines += [f"  for: {s}" for s in self.support]
        lines += [f"  against: {s}" for s in self.against]
        return lines

    def judgement_markdown(self) -> str:
        support = "\n".join(f"- {markdown_text(s, 400)}" for s in self.support) or "- (none)"
        against = "\n".join(f"- {markdown_text(s, 400)}" for s in self.against) or "- (none)"
        return (f"**Confidence:** {self.confidence}\n\n**Evidence for**\n\n{support}\n\n"
                f"**Evidence against**\n\n{against}")

    @property
    def digest(self) -> str:
        return _digest({"incident": self.incident_id, "service": self.service, "environment": self.environment,
                        "actions": [a.digest for a in self.actions]})

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["actions"] = [a.as_dict() for a in self.actions]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Plan":
        return cls(incident_id=data["incident_id"], service=data["service"], environment=data["environment"],
                   actions=tuple(PlannedAction(**a) for a in data["actions"]), evidence=tuple(data.get("evidence", ())),
                   summary=data.get("summary", ""), confidence=data.get("confidence", Confidence.STRONG),
                   support=tuple(data.get("support", ())), against=tuple(data.get("against", ())),
                   handover=data.get("handover"), scenario=data.get("scenario", ""))

    def markdown(self, timeout_seconds: int | None = None) -> str:
        rows = "\n".join(
            f"| {n} | **{a.kind}** | `{a.target}` | {markdown_text(a.before)} → {markdown_text(a.after)} "
            f"| {markdown_text(a.via)} |"
            for n, a in enumerate(self.actions, 1)
        )
        evidence = "\n".join(f"- {markdown_text(e, 400)}" for e in self.evidence) or "- (none recorded)"
        waiting = f" Unanswered after {timeout_seconds // 60} min counts as declined." if timeout_seconds else ""
        return (f"### Approve remediation for incident {self.incident_id}: "
                f"`{self.service}` in `{self.environment}`\n\n"
                f"{markdown_text(self.summary, 500)}\n\n"
                f"| # | Action | Target | Before → After | Via |\n|---|---|---|---|---|\n{rows}\n\n"
                f"{self.judgement_markdown()}\n\n"
                f"**All checks**\n\n{evidence}\n\n"
                f"Switch **approve** on, give your name and a reason, and submit to run exactly this plan. "
                f"Submitting with approve off declines it and nothing changes.{waiting}\n\n"
                f"<sub>plan digest {self.digest[:16]}</sub>")


@dataclass(frozen=True)
class Grant:
    plan_digest: str
    action_digests: tuple[str, ...]
    approver: str
    reason: str
    automatic: bool
    granted_at: str
    signature: str

    @classmethod
    def issue(cls, plan: Plan, approver: str, reason: str, automatic: bool = False) -> "Grant":
        fields = (plan.digest, tuple(a.digest for a in plan.actions), approver, reason, automatic,
                  datetime.now(timezone.utc).isoformat())
        return cls(*fields, signature=_sign(fields))

    def valid(self) -> bool:
        fields = (self.plan_digest, tuple(self.action_digests), self.approver, self.reason, self.automatic,
                  self.granted_at)
        return hmac.compare_digest(self.signature, _sign(fields))


def _sign(fields: tuple[Any, ...]) -> str:
    return hmac.new(_KEY, json.dumps(fields, default=str).encode(), hashlib.sha256).hexdigest()


def require_grant(grant: Grant | None, action: PlannedAction) -> Grant:
    """Raise NotApproved unless `grant` is genuine and covers exactly `action`."""
    if grant is None:
        raise NotApproved(f"refusing to {action.describe()}: no approval grant")
    if not isinstance(grant, Grant) or not grant.valid():
        raise NotApproved(f"refusing to {action.describe()}: the grant is not genuine")
    if action.digest not in grant.action_digests:
        raise NotApproved(f"refusing to {action.describe()}: the approved plan does not contain this action")
    return grant
