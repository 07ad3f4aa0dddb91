"""What one pass of the incident watch did, and what a resolution by hand did (tasks/watch.py):
typed for the watch's own steps and for tests; the incident-watch and resolve-incident flows
return them as JSON (their results, with the same keys)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Escalated(BaseModel):
    """An incident paged at the next level of its escalation policy."""

    incident: int
    level: int
    contacts: list[str]


class ActionItemsTracked(BaseModel):
    done: list[int] = Field(default_factory=list)  # their GitHub issue closed
    reminded: list[int] = Field(default_factory=list)  # open past their due date


Handled = Literal["reverted", "asked", "widening", "gone"]  # a ContainmentReviewed field


class ContainmentReviewed(BaseModel):
    """Standing containment the watch handled, by what it did."""

    reverted: list[int] = Field(default_factory=list)  # expired and turned back (raised logging)
    asked: list[int] = Field(default_factory=list)  # expired: a person asked to lift or extend it
    widening: list[int] = Field(default_factory=list)  # another policy now selects the pods
    gone: list[int] = Field(default_factory=list)  # removed by someone else: nothing stands


class SweepSummary(BaseModel):
    """Each list holds incident ids, except where its field says otherwise."""

    open: int = 0
    escalated: list[Escalated] = Field(default_factory=list)
    status_updates: list[int] = Field(default_factory=list)
    commander_asked: list[int] = Field(default_factory=list)  # approval ids
    stakeholder_drafts: list[int] = Field(default_factory=list)
    expired_approvals: list[int] = Field(default_factory=list)  # approval ids
    ended_runs: list[int] = Field(default_factory=list)  # approval ids
    withdrawn: list[int] = Field(default_factory=list)  # approval ids
    postmortem_reminders: list[int] = Field(default_factory=list)
    summary_reminders: list[int] = Field(default_factory=list)
    action_items: ActionItemsTracked = Field(default_factory=ActionItemsTracked)  # item ids
    containment: ContainmentReviewed = Field(default_factory=ContainmentReviewed)  # containment ids


class ResolvedByHand(BaseModel):
    """An incident a person closed, and the waiting runbooks that stopped with it (their run ids)."""

    incident_id: int
    resolved_by: str
    stopped_runs: list[str] = Field(default_factory=list)
