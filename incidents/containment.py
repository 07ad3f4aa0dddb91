"""Containment that stands after an incident: a block of addresses or a raised log level. Each
is recorded with an expiry and how to revert it, so it never outlives its reason unnoticed:
the incident watch reverts a raised log level when it expires, asks a person about an expired
block, and reports a NetworkPolicy block that another policy selecting the same pods has
turned into a widening (policies add up: "all but these addresses" then admits what the other
policy restricts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from incidents.models import StoreRow
from incidents.vocabulary import ActionKind


@dataclass(frozen=True)
class StandingContainment(StoreRow):
    """One containment change as it stands: `params` are the approved action's parameters
    (what it changed and, for a log level, the level before)."""

    id: int
    incident_id: int
    environment: str
    service: str
    kind: ActionKind
    target: str
    params: dict[str, Any]
    applied_at: datetime
    expires_at: datetime
    status: str  # active | lifted
    lifted_at: datetime | None = None
    lifted_by: str | None = None
    note: str | None = None
    expiry_asked_at: datetime | None = None
    widening_reported_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ActionKind.parse(self.kind))

    @property
    def active(self) -> bool:
        return self.status == "active"

    def expired(self, now: datetime) -> bool:
        return self.active and self.expires_at <= now

    def describe(self) -> str:
        if self.kind == ActionKind.ENABLE_LOGGING:
            p = self.params
            return f"{p.get('key')}={p.get('level')} on configmap/{p.get('configmap')} (was {p.get('previous')})"
        return f"block of {', '.join(self.params.get('cidrs', []))} via {self.target}"


def expiry(now: datetime, hours: float) -> datetime:
    return now + timedelta(hours=hours)
