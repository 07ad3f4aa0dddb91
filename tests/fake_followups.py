"""The in-memory store's records of what the watch and the follow-ups keep (tests/fake_store.py
mixes this in): post-mortems, action items, playbook proposals, drills, standing containment,
the roles' overdue duties, the approvals the watch looks after, alerts resolving, the periodic
status update's turn, and the metrics' rows. Each follows the rule of the SQL it stands for in
incidents/ (tests/test_store_contract.py runs the rules against both). For tests only."""

from __future__ import annotations

import builtins
import itertools
from dataclasses import replace
from datetime import datetime, timedelta, timezone

from incidents.containment import StandingContainment
from incidents.followup_models import (
    ActionItemRecord,
    Drill,
    Lesson,
    OverduePostmortem,
    Postmortem,
    Proposal,
    Scorecard,
)
from incidents.models import Approval, Incident, IncidentAlert
from incidents.store_base import StoreUnreachable
from incidents.store_duties import Duty
from incidents.success_metrics import MetricRow
from incidents.vocabulary import DetectedBy

CONTAINMENT_MARKS = ("expiry_asked_at", "widening_reported_at")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _is_drill(incident: Incident) -> bool:
    return incident.alert is not None and "drill_id" in incident.alert.labels


class FakeFollowUps:
    """Needs the incidents, approvals, alerts, standing containment, duties and drills of the
    store it is mixed into."""

    incidents: dict[int, Incident]
    approvals_: dict[int, Approval]
    alerts: dict[tuple[int, str], IncidentAlert]
    standing: dict[int, StandingContainment]
    duties: dict[tuple[int, str, str], Duty]
    drills: dict[str, Drill]
    postmortem_needed: dict[int, bool]

    def _init_followups(self) -> None:
        self.postmortems: dict[int, Postmortem] = {}
        self.items: dict[int, ActionItemRecord] = {}
        self.proposals_: dict[tuple[int, str], Proposal] = {}
        self._row_ids = itertools.count(1)

    # -- the periodic status update ------------------------------------------------------------
    def claim_status_update(self, incident_id: int, seen: datetime | None, now: datetime) -> bool:
        incident = self.incidents[incident_id]
        if incident.resolved_at is not None or incident.last_update_at != seen:
            return False
        self.incidents[incident_id] = replace(incident, last_update_at=now)
        return True

    # -- post-mortems --------------------------------------------------------------------------
    def start_postmortem(self, incident_id: int, flow_run_id: str | None) -> bool:
        held = self.postmortems.get(incident_id)
        if held is None:
            self.postmortems[incident_id] = Postmortem(incident_id, _now(), flow_run_id)
            return True
        if flow_run_id and held.completed_at is None:
            self.postmortems[incident_id] = replace(held, flow_run_id=flow_run_id)
        return False

    def postmortem(self, incident_id: int) -> Postmortem | None:
        return self.postmortems.get(incident_id)

    def complete_postmortem(self, incident_id: int, by: str, root_cause: str, lessons: list[Lesson], markdown: str,
                            users_affected: str | None) -> None:
        held = self.postmortems.get(incident_id) or Postmortem(incident_id, _now())
        self.postmortems[incident_id] = replace(held, completed_at=held.completed_at or _now(), completed_by=by,
                                                root_cause=root_cause, lessons=lessons, markdown=markdown)
        incident = self.incidents[incident_id]
        self.incidents[incident_id] = replace(incident, root_cause=root_cause,
                                              users_affected=users_affected or incident.users_affected)

    def overdue_postmortems(self, environment: str, now: datetime, due: timedelta,
                            remind_every: timedelta) -> list[OverduePostmortem]:
        late = []
        for incident in sorted(self.incidents.values(), key=lambda i: i.resolved_at or now):
            held = self.postmortems.get(incident.id)
            reminded = held.last_reminded_at if held else None
            if (incident.environment == environment and incident.resolved_at is not None
                    and incident.resolved_at + due <= now and (held is None or held.completed_at is None)
                    and not _is_drill(incident) and self.postmortem_needed.get(incident.id, True)
                    and (reminded is None or reminded + remind_every <= now)):
                late.append(OverduePostmortem(incident.id, held.flow_run_id if held else None))
        return late

    def postmortem_reminded(self, incident_id: int, now: datetime) -> None:
        held = self.postmortems.get(incident_id) or Postmortem(incident_id, _now())
        self.postmortems[incident_id] = replace(held, last_reminded_at=now)

    # -- action items --------------------------------------------------------------------------
    def add_action_item(self, incident_id: int, title: str, owner: str | None, horizon: str,
                        due_at: datetime) -> ActionItemRecord:
        for item in self.items.values():
            if (item.incident_id, item.title) == (incident_id, title):
                return self._joined(item)
        item = ActionItemRecord(next(self._row_ids), incident_id, title, owner, horizon, due_at, _now())
        self.items[item.id] = item
        return item

    def _joined(self, item: ActionItemRecord) -> ActionItemRecord:
        incident = self.incidents[item.incident_id]
        return replace(item, environment=incident.environment, service=incident.service,
                       incident_issue=incident.github_issue)

    def attach_action_issue(self, item_id: int, repo: str, number: int, url: str) -> None:
        if item_id in self.items:
            self.items[item_id] = replace(self.items[item_id], repo=repo, issue_number=number, issue_url=url)

    def action_items(self, incident_id: int | None = None, environment: str | None = None,
                     open_only: bool = False) -> list[ActionItemRecord]:
        found = [self._joined(item) for item in self.items.values()
                 if (incident_id is None or item.incident_id == incident_id)
                 and (environment is None or self.incidents[item.incident_id].environment == environment)
                 and (not open_only or item.completed_at is None)]
        return sorted(found, key=lambda item: (item.due_at, item.id))

    def complete_action_item(self, item_id: int, at: datetime) -> None:
        if item_id in self.items:
            self.items[item_id] = replace(self.items[item_id], completed_at=self.items[item_id].completed_at or at)

    def action_item_reminded(self, item_id: int, now: datetime) -> None:
        if item_id in self.items:
            self.items[item_id] = replace(self.items[item_id], last_reminded_at=now)

    # -- playbook feedback ---------------------------------------------------------------------
    def propose(self, incident_id: int, section: str, proposal: str) -> None:
        self.proposals_.setdefault((incident_id, proposal), Proposal(next(self._row_ids), incident_id, section,
                                                                     proposal, _now()))

    def proposals(self, environment: str | None = None) -> list[Proposal]:
        found = []
        for proposal in self.proposals_.values():
            incident = self.incidents[proposal.incident_id]
            if environment is None or incident.environment == environment:
                found.append(replace(proposal, service=incident.service, severity=incident.severity.value,
                                     github_issue=incident.github_issue, issue_url=incident.issue_url))
        return sorted(found, key=lambda p: (p.section, p.proposed_at))

    # -- metrics -------------------------------------------------------------------------------
    def metric_rows(self, environment: str, since: datetime | None = None) -> list[MetricRow]:
        rows = []
        for incident in sorted(self.incidents.values(), key=lambda i: i.id):
            started = incident.started_at or incident.opened_at
            if (incident.environment != environment or (since is not None and started < since)
                    or incident.detected_by == DetectedBy.DRY_RUN):
                continue
            held, summary = self.postmortems.get(incident.id), self.duties.get((incident.id, "summary_24h", ""))
            rows.append(MetricRow(incident.id, incident.severity.value, incident.detected_by,
                                  incident.alert is not None and incident.detected_by != DetectedBy.SLACK,
                                  _is_drill(incident), started, incident.opened_at, incident.acknowledged_at,
                                  incident.recovered_at, incident.resolved_at, held.completed_at if held else None,
                                  summary.due_at if summary else None, summary.done_at if summary else None))
        return rows

    # -- drills --------------------------------------------------------------------------------
    def start_drill(self, drill_id: str, fault: str, scenario: str, environment: str, service: str,
                    approval_mode: str, approval_delay_seconds: float, flow_run_id: str | None) -> None:
        if drill_id in self.drills:
            raise StoreUnreachable(f"drill {drill_id} exists")  # what the real store's primary key raises
        self.drills[drill_id] = Drill(drill_id, fault, scenario, environment, service, approval_mode,
                                      approval_delay_seconds, "running", _now(), flow_run_id=flow_run_id)

    def finish_drill(self, drill_id: str, status: str, score: Scorecard | None, error: str | None,
                     scenario_run_id: str | None, incident_id: int | None) -> None:
        if drill_id in self.drills:
            self.drills[drill_id] = replace(self.drills[drill_id], status=status, score=score, error=error,
                                            scenario_run_id=scenario_run_id, incident_id=incident_id,
                                            finished_at=_now())

    def drill_history(self, limit: int = 50) -> list[Drill]:
        done = [d for d in self.drills.values() if d.finished_at is not None]
        return sorted(done, key=lambda d: d.started_at, reverse=True)[:limit]

    # -- alerts --------------------------------------------------------------------------------
    def resolve_alert(self, incident_id: int, identity: str) -> bool:
        held = self.alerts.get((incident_id, identity))
        if held is None or held.status != "firing":
            return False
        self.alerts[incident_id, identity] = replace(held, status="resolved", resolved_at=_now(), last_seen=_now())
        return True

    def incident_for_alert(self, alert_key: str) -> Incident | None:
        identity, _, starts_at = alert_key.partition(":")
        ids = [a.incident_id for a in self.alerts.values() if (a.identity, a.starts_at) == (identity, starts_at)]
        return replace(self.incidents[max(ids)]) if ids else None

    # -- approvals the watch looks after -------------------------------------------------------
    def _pending(self, environment: str | None) -> builtins.list[Approval]:
        return [a for a in sorted(self.approvals_.values(), key=lambda a: a.id)
                if a.decision is None and a.flow_run_id is not None
                and (environment is None or self.incidents[a.incident_id].environment == environment)]

    def expired_approvals(self, environment: str, now: datetime) -> builtins.list[Approval]:
        return [a for a in self._pending(environment) if a.deadline_at is not None and a.deadline_at <= now]

    def waiting_approvals(self, environment: str, older_than_seconds: float = 30.0) -> builtins.list[Approval]:
        asked_before = _now() - timedelta(seconds=older_than_seconds)
        return [a for a in self._pending(environment) if a.requested_at <= asked_before]

    def quiet_approvals(self, environment: str | None, grace_seconds: float, now: datetime) -> builtins.list[Approval]:
        quiet = []
        for approval in self._pending(environment):
            incident = self.incidents[approval.incident_id]
            alerts = [a for a in self.alerts.values() if a.incident_id == incident.id]
            settled = all(a.status != "firing" and a.resolved_at is not None
                          and a.resolved_at <= now - timedelta(seconds=grace_seconds) for a in alerts)
            if incident.resolved_at is None and alerts and settled:
                quiet.append(replace(approval, environment=incident.environment))
        return quiet

    # -- standing containment ------------------------------------------------------------------
    def containments(self, environment: str | None = None,
                     active_only: bool = True) -> builtins.list[StandingContainment]:
        return [c for c in sorted(self.standing.values(), key=lambda c: c.id)
                if (not active_only or c.active) and (environment is None or c.environment == environment)]

    def containment(self, containment_id: int) -> StandingContainment | None:
        return self.standing.get(containment_id)

    def lift_containment(self, containment_id: int, by: str, note: str) -> bool:
        held = self.standing.get(containment_id)
        if held is None or not held.active:
            return False
        self.standing[containment_id] = replace(held, status="lifted", lifted_at=_now(), lifted_by=by, note=note)
        return True

    def extend_containment(self, containment_id: int, expires_at: datetime) -> bool:
        held = self.standing.get(containment_id)
        if held is None or not held.active:
            return False
        self.standing[containment_id] = replace(held, expires_at=expires_at, expiry_asked_at=None)
        return True

    def mark_containment(self, containment_id: int, column: str) -> bool:
        if column not in CONTAINMENT_MARKS:
            raise ValueError(f"not a containment mark: {column}")
        held = self.standing.get(containment_id)
        if held is None or getattr(held, column) is not None:
            return False
        now = _now()
        self.standing[containment_id] = (replace(held, expiry_asked_at=now) if column == "expiry_asked_at"
                                         else replace(held, widening_reported_at=now))
        return True

    # -- the roles' duties, overdue ------------------------------------------------------------
    def overdue_duties(self, environment: str, duty: str, now: datetime, remind_every: timedelta) -> list[Duty]:
        return [d for d in sorted(self.duties.values(), key=lambda d: d.incident_id)
                if d.duty == duty and d.done_at is None and d.due_at is not None and d.due_at <= now
                and self.incidents[d.incident_id].environment == environment
                and (d.last_reminded_at is None or d.last_reminded_at <= now - remind_every)]

    def duty_reminded(self, duty: Duty, now: datetime) -> bool:
        key = (duty.incident_id, duty.duty, duty.slot)
        held = self.duties.get(key)
        if held is None or held.last_reminded_at != duty.last_reminded_at:
            return False
        self.duties[key] = replace(held, last_reminded_at=now)
        return True
