"""Containment that stands after an incident: a block of addresses or a raised log level. Each
is recorded with an expiry and how to revert it, so it never outlives its reason unnoticed:
the incident watch reverts a raised log level when it expires, asks a person about an expired
block, and reports a NetworkPolicy block that another policy selecting the same pods has
turned into a widening (policies add up: "all but these addresses" then admits what the other
policy restricts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from incidents import action_params
from incidents.action_params import ActionParams, Block, EnableLogging
from incidents.models import StoreRow, unreadable
from incidents.vocabulary import ActionKind


@dataclass(frozen=True)
class StandingContainment(StoreRow):
    """One containment change as it stands: `params` are the approved action's parameters
    (what it changed and, for a log level, the level before), read back from the stored record
    as the kind's model (`incidents.action_params`). A record that no longer reads back (a later
    version changed the model) keeps the row readable: `params` is None, `unreadable_params` says
    why, the watch asks a person about it when it expires, and a person can lift it after
    undoing it by hand."""

    id: int
    incident_id: int
    environment: str
    service: str
    kind: ActionKind
    target: str
    params: ActionParams | None
    applied_at: datetime
    expires_at: datetime
    status: str  # active | lifted
    lifted_at: datetime | None = None
    lifted_by: str | None = None
    note: str | None = None
    expiry_asked_at: datetime | None = None
    widening_reported_at: datetime | None = None
    unreadable_params: str | None = None  # not a column: why the stored params did not read back

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ActionKind.parse(self.kind))
        if self.params is None or isinstance(self.params, ActionParams):
            return
        try:
            object.__setattr__(self, "params", action_params.parse(self.kind, self.params))
        except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
            object.__setattr__(self, "params", None)
            object.__setattr__(self, "unreadable_params", unreadable(exc))

    @property
    def active(self) -> bool:
        return self.status == "active"

    def expired(self, now: datetime) -> bool:
        return self.active and self.expires_at <= now

    def describe(self) -> str:
        p = self.params
        if p is None:
            return f"{self.kind} on {self.target} (its recorded parameters do not read back: {self.unreadable_params})"
        if isinstance(p, EnableLogging):
            return f"{p.key}={p.level} on configmap/{p.configmap} (was {p.previous})"
        cidrs = p.cidrs if isinstance(p, Block) else []
        return f"block of {', '.join(cidrs)} via {self.target}"


def expiry(now: datetime, hours: float) -> datetime:
    return now + timedelta(hours=hours)
