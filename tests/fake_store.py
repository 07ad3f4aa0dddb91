"""The incident store in memory, for the unit tier: the methods a run's lifecycle and its
approval gate call, with the rules of the SQL in incidents/store*.py that they rely on (one
open incident per dedup key, an approval decided once, an action claimed once, a thread
opened once). A method the real store has and this one lacks fails with AttributeError, so a
test never passes on a call it did not mean to make. For tests only, never shipped."""

from __future__ import annotations

import builtins
import itertools
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from incidents import timeline_payloads as payloads
from incidents.action_params import ActionParams
from incidents.alerts import AlertParameter
from incidents.containment import StandingContainment
from incidents.findings import Finding
from incidents.followup_models import Drill
from incidents.models import (
    ActionRecord,
    Approval,
    CancelRequest,
    EventKind,
    Incident,
    IncidentAlert,
    Lease,
    Severity,
    Signature,
    SlackThread,
    Status,
    TimelineEvent,
)
from incidents.plans import Plan
from incidents.redaction import redact, redact_data
from incidents.store import RecordNotFound
from incidents.store_duties import Duty
from incidents.timeline_payloads import AlertJoined, Payload
from incidents.vocabulary import ActionKind, DetectedBy
from tests.fake_followups import FakeFollowUps


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _retitled(title: str, severity: Severity) -> str:
    """The store's title prefix follows the severity ("[P1] api: ..." -> "[P0] api: ...")."""
    return re.sub(r"^\[P[0-3]\]", f"[{severity.value}]", title)


class FakeStore(FakeFollowUps):
    def __init__(self) -> None:
        self.incidents: dict[int, Incident] = {}
        self.events: dict[int, list[TimelineEvent]] = {}
        self.approvals_: dict[int, Approval] = {}
        self.signatures_: dict[int, list[Signature]] = {}
        self.actions: dict[tuple[int, str, str], ActionRecord] = {}
        self.threads: dict[int, SlackThread] = {}
        self.pagers_: dict[int, list[str]] = {}
        self.alerts: dict[tuple[int, str], IncidentAlert] = {}  # by (incident, identity)
        self.leases: dict[str, Lease] = {}
        self.cancel_requests: dict[int, CancelRequest] = {}
        self.drills: dict[str, Drill] = {}
        self.standing: dict[int, StandingContainment] = {}
        self.roles: dict[int, dict[str, str]] = {}
        self.duties: dict[tuple[int, str, str], Duty] = {}
        self.postmortem_needed: dict[int, bool] = {}
        self._ids = itertools.count(1)
        self._init_followups()

    # -- incidents -------------------------------------------------------------------------------
    def open_incident(self, *, dedup_key: str, scenario: str, service: str, environment: str, severity: Severity,
                      title: str, detected_by: DetectedBy, flow_run_id: str | None, alert: AlertParameter | None,
                      started_at: datetime | None = None) -> Incident:
        for incident in self.incidents.values():
            if incident.dedup_key == dedup_key and incident.resolved_at is None:
                return replace(incident, created=False)
        now = _now()
        incident = Incident(id=next(self._ids), dedup_key=dedup_key, scenario=scenario, service=service,
                            environment=environment, severity=severity, status=Status.INVESTIGATING, title=title,
                            opened_at=now, detected_by=detected_by, flow_run_id=flow_run_id, alert=alert,
                            started_at=min(started_at or now, now), last_update_at=now)
        self.incidents[incident.id] = incident
        return replace(incident, created=True)

    def get(self, incident_id: int) -> Incident:
        if incident_id not in self.incidents:
            raise RecordNotFound(f"no incident {incident_id}")
        return replace(self.incidents[incident_id])

    def list(self, limit: int = 50, open_only: bool = False, environment: str | None = None) -> builtins.list[Incident]:
        rows = [i for i in self.incidents.values() if (not open_only or i.resolved_at is None)
                and (environment is None or i.environment == environment)]
        return [replace(i) for i in sorted(rows, key=lambda i: i.opened_at, reverse=True)[:limit]]

    def _update(self, incident_id: int, **fields: Any) -> None:
        self.incidents[incident_id] = replace(self.incidents[incident_id], **fields)

    def attach_issue(self, incident_id: int, repo: str, number: int, url: str) -> None:
        self._update(incident_id, github_repo=repo, github_issue=number, issue_url=url)

    def set_status(self, incident_id: int, status: Status, **fields: Any) -> None:
        allowed = {"root_cause", "resolution", "recovered_at", "resolved_at", "severity", "eta", "impact",
                   "users_affected", "last_update_at"}
        if set(fields) - allowed:
            raise ValueError(f"cannot set {sorted(set(fields) - allowed)} on an incident")
        self._update(incident_id, status=status, **fields)

    def acknowledge(self, incident_id: int, by: str) -> bool:
        incident = self.incidents[incident_id]
        if incident.acknowledged_at is not None or incident.resolved_at is not None:
            return False
        self._update(incident_id, acknowledged_at=_now(), acknowledged_by=by)
        return True

    def escalate_to(self, incident_id: int, seen_level: int, level: int) -> bool:
        incident = self.incidents[incident_id]
        if incident.escalation_level != seen_level or incident.acknowledged_at or incident.resolved_at:
            return False
        self._update(incident_id, escalation_level=level, escalated_at=_now())
        return True

    def close(self, incident_id: int, root_cause: str, resolution: str, *, postmortem_needed: bool = True) -> bool:
        incident = self.incidents[incident_id]
        if incident.resolved_at is not None:
            return False
        now = _now()
        self.postmortem_needed[incident_id] = postmortem_needed
        self._update(incident_id, status=Status.RESOLVED, root_cause=root_cause, resolution=resolution,
                     recovered_at=incident.recovered_at or now, resolved_at=now)
        return True

    def record_dry_run(self, scenario: str, service: str, environment: str, severity: Severity, title: str,
                       flow_run_id: str | None) -> Incident:
        now = _now()
        incident = Incident(id=next(self._ids), dedup_key=f"dry-run:{secrets.token_hex(8)}", scenario=scenario,
                            service=service, environment=environment, severity=severity, status=Status.RESOLVED,
                            title=title, opened_at=now, detected_by=DetectedBy.DRY_RUN, flow_run_id=flow_run_id,
                            started_at=now, resolved_at=now, recovered_at=now,
                            resolution="dry run: nothing was changed")
        self.incidents[incident.id] = incident
        return replace(incident)

    # -- correlation and announcement ------------------------------------------------------------
    def open_for_key(self, key: str) -> Incident | None:
        found = [i for i in self.incidents.values() if i.dedup_key == key and i.resolved_at is None]
        return replace(found[0]) if found else None

    def claim_announcement(self, incident_id: int) -> bool:
        if self.incidents[incident_id].announced_at is not None:
            return False
        self._update(incident_id, announced_at=_now())
        return True

    def set_runbook_run(self, incident_id: int, flow_run_id: str) -> str:
        named = self.incidents[incident_id].flow_run_id or flow_run_id
        self._update(incident_id, flow_run_id=named)
        return named

    def raise_severity(self, incident_id: int, severity: Severity) -> Severity | None:
        incident = self.incidents[incident_id]
        if incident.resolved_at is not None or not incident.severity > severity:  # P0 < P1: "more severe" is lower
            return None
        self._update(incident_id, severity=severity, title=_retitled(incident.title, severity))
        return incident.severity

    def set_severity(self, incident_id: int, severity: Severity) -> Severity | None:
        incident = self.incidents[incident_id]
        if incident.resolved_at is not None or incident.severity == severity:
            return None
        self._update(incident_id, severity=severity, title=_retitled(incident.title, severity))
        return incident.severity

    def record_alert(self, incident_id: int, identity: str, alertname: str, severity: str | None,
                     starts_at: str) -> str:
        before, now = self.alerts.get((incident_id, identity)), _now()
        self.alerts[incident_id, identity] = IncidentAlert(
            incident_id, identity, alertname, severity, "firing", starts_at, before.first_seen if before else now, now,
            flaps=(before.flaps + (before.status == "resolved")) if before else 0)
        return "new" if before is None else "refired" if before.status == "resolved" else "repeat"

    # -- timeline, Slack thread, pagers ----------------------------------------------------------
    def add_event(self, incident_id: int, actor: str, kind: EventKind, message: str,
                  data: Payload | None = None) -> None:
        kind = EventKind(kind)
        stored = redact_data(payloads.checked(kind, data).as_data())  # read back as the real store reads its JSON
        self.events.setdefault(incident_id, []).append(TimelineEvent(_now(), redact(actor), kind, redact(message),
                                                                     payloads.read(kind, stored)))

    def timeline(self, incident_id: int) -> builtins.list[TimelineEvent]:
        return builtins.list(self.events.get(incident_id, []))

    def slack_thread(self, incident_id: int) -> SlackThread | None:
        return self.threads.get(incident_id)

    def start_slack_thread(self, incident_id: int, channel: str, ts: str, parent: str) -> bool:
        if incident_id in self.threads:
            return False
        self.threads[incident_id] = SlackThread(channel, ts, parent)
        return True

    def set_slack_parent(self, incident_id: int, seen: str, parent: str) -> bool:
        thread = self.threads.get(incident_id)
        if thread is None or thread.parent != seen:
            return False
        self.threads[incident_id] = replace(thread, parent=parent)
        return True

    def add_pager(self, incident_id: int, pager: str) -> bool:
        pagers = self.pagers_.setdefault(incident_id, [])
        if pager in pagers:
            return False
        pagers.append(pager)
        return True

    def pagers(self, incident_id: int) -> builtins.list[str]:
        return builtins.list(self.pagers_.get(incident_id, []))

    def assign_role(self, incident_id: int, role: str, handle: str, by: str) -> str | None:
        held = self.roles.setdefault(incident_id, {})
        before, held[role] = held.get(role), handle
        return before

    def assigned_roles(self, incident_id: int) -> dict[str, str]:
        return dict(self.roles.get(incident_id, {}))

    # -- the roles' duties -----------------------------------------------------------------------
    def claim_duty(self, incident_id: int, duty: str, slot: str = "", due_at: datetime | None = None) -> bool:
        if (incident_id, duty, slot) in self.duties:
            return False
        self.duties[incident_id, duty, slot] = Duty(incident_id, duty, slot, _now(), due_at, None, None, None)
        return True

    def duty(self, incident_id: int, duty: str, slot: str = "") -> Duty | None:
        return self.duties.get((incident_id, duty, slot))

    def complete_duty(self, incident_id: int, duty: str, by: str, slot: str = "") -> bool:
        held = self.duties.get((incident_id, duty, slot))
        if held is None or held.done_at is not None:
            return False
        self.duties[incident_id, duty, slot] = replace(held, done_at=_now(), done_by=by)
        return True

    # -- approvals -------------------------------------------------------------------------------
    def request_approval(self, incident_id: int, plan: Plan, flow_run_id: str | None,
                         deadline_at: datetime | None = None, findings: Mapping[str, Finding] | None = None) -> int:
        approval_id = next(self._ids)
        self.approvals_[approval_id] = Approval(id=approval_id, incident_id=incident_id, plan_digest=plan.digest,
                                                plan=plan, flow_run_id=flow_run_id, requested_at=_now(),
                                                token=secrets.token_urlsafe(18), deadline_at=deadline_at,
                                                findings=dict(findings) if findings is not None else None)
        return approval_id

    def approval_for_run(self, flow_run_id: str) -> Approval | None:
        mine = [a for a in self.approvals_.values() if a.flow_run_id == flow_run_id]
        return mine[-1] if mine else None

    def incident_for_run(self, flow_run_id: str) -> Incident | None:
        mine = {i.id for i in self.incidents.values() if i.flow_run_id == flow_run_id}
        mine |= {a.incident_id for a in self.approvals_.values() if a.flow_run_id == flow_run_id}
        mine |= {incident_id for incident_id, events in self.events.items() for e in events
                 if isinstance(e.data, AlertJoined) and e.data.flow_run_id == flow_run_id}
        return self.incidents[max(mine)] if mine else None

    def approval(self, approval_id: int) -> Approval | None:
        approval = self.approvals_.get(approval_id)
        if approval is None:
            return None
        incident = self.incidents[approval.incident_id]
        return replace(approval, environment=incident.environment, severity=incident.severity.value,
                       service=incident.service, github_issue=incident.github_issue, title=incident.title)

    def approvals(self, incident_id: int) -> builtins.list[Approval]:
        return [a for a in self.approvals_.values() if a.incident_id == incident_id]

    def decide_approval(self, approval_id: int, decision: str, approver: str | None, reason: str | None,
                        automatic: bool = False) -> None:
        approval = self.approvals_[approval_id]
        if approval.decision is not None:
            return
        self.approvals_[approval_id] = replace(approval, decision=decision, approver=approver, reason=reason,
                                               automatic=automatic, decided_at=_now())
        incident = self.incidents[approval.incident_id]
        if decision in ("approved", "declined") and incident.acknowledged_at is None:
            self._update(incident.id, acknowledged_at=_now(), acknowledged_by=approver)

    def withdraw_approval(self, approval_id: int, by: str, reason: str) -> bool:
        if self.approvals_[approval_id].decision is not None:
            return False
        self.approvals_[approval_id] = replace(self.approvals_[approval_id], decision="withdrawn", approver=by,
                                               reason=reason, automatic=True, decided_at=_now())
        return True

    def sign(self, approval_id: int, approver: str, decision: str, reason: str) -> bool:
        signed = self.signatures_.setdefault(approval_id, [])
        if any(s.approver == approver for s in signed):
            return False
        signed.append(Signature(approval_id, approver, decision, reason, _now()))
        return True

    def signatures(self, approval_id: int) -> builtins.list[Signature]:
        return builtins.list(self.signatures_.get(approval_id, []))

    def unsign(self, approval_id: int, approver: str) -> bool:
        signed = self.signatures_.get(approval_id, [])
        kept = [s for s in signed if s.approver != approver]
        self.signatures_[approval_id] = kept
        return len(kept) < len(signed)

    def next_attempt(self, approval_id: int) -> int:
        approval = self.approvals_[approval_id]
        self.approvals_[approval_id] = replace(approval, attempt=approval.attempt + 1)
        return approval.attempt + 1

    def mark_verified(self, approval_id: int) -> None:
        self.approvals_[approval_id] = replace(self.approvals_[approval_id], verified=True)

    # -- the action log --------------------------------------------------------------------------
    def begin_action(self, plan_digest: str, action_digest: str, incident_id: int, kind: str) -> ActionRecord:
        key = (incident_id, plan_digest, action_digest)
        if key not in self.actions:
            self.actions[key] = ActionRecord(plan_digest, action_digest, incident_id, kind, "started", 1, _now())
            return replace(self.actions[key], first=True)
        self.actions[key] = replace(self.actions[key], attempts=self.actions[key].attempts + 1)
        return self.actions[key]

    def mark_acting(self, incident_id: int, plan_digest: str, action_digest: str) -> None:
        key = (incident_id, plan_digest, action_digest)
        self.actions[key] = replace(self.actions[key], acting_at=self.actions[key].acting_at or _now())

    def finish_action(self, incident_id: int, plan_digest: str, action_digest: str, status: str, detail: str) -> None:
        key = (incident_id, plan_digest, action_digest)
        self.actions[key] = replace(self.actions[key], status=status, detail=detail, finished_at=_now())

    def record_containment(self, incident_id: int, environment: str, service: str, kind: ActionKind, target: str,
                           params: ActionParams, expires_at: datetime) -> StandingContainment:
        standing = StandingContainment(next(self._ids), incident_id, environment, service, kind, target, params,
                                       _now(), expires_at, "active")
        self.standing[standing.id] = standing
        return standing

    def action_log(self, incident_id: int) -> builtins.list[ActionRecord]:
        return [a for a in self.actions.values() if a.incident_id == incident_id]

    # -- leases ----------------------------------------------------------------------------------
    def take_lease(self, target: str, flow_run_id: str, incident_id: int, scenario: str,
                   holder_gone: Callable[[str], bool]) -> Lease:
        held = self.leases.get(target)
        if held is None or held.flow_run_id == flow_run_id or holder_gone(held.flow_run_id):
            held = self.leases[target] = Lease(flow_run_id, incident_id, scenario, target, _now())
        return held

    def release_lease(self, target: str, flow_run_id: str) -> bool:
        if target in self.leases and self.leases[target].flow_run_id == flow_run_id:
            del self.leases[target]
            return True
        return False

    def request_cancel(self, flow_run_id: str, requested_by: str, reason: str) -> int:
        request_id = max(self.cancel_requests, default=0) + 1
        self.cancel_requests[request_id] = CancelRequest(flow_run_id, redact(requested_by), redact(reason), _now())
        return request_id

    def withdraw_cancel(self, request_id: int) -> None:
        self.cancel_requests.pop(request_id, None)

    def cancel_request(self, flow_run_id: str) -> CancelRequest | None:
        mine = [request_id for request_id, r in self.cancel_requests.items() if r.flow_run_id == flow_run_id]
        return self.cancel_requests[max(mine)] if mine else None

    # -- drills ----------------------------------------------------------------------------------
    def drill(self, drill_id: str) -> Drill | None:
        return self.drills.get(drill_id)

    # -- reading what happened (tests) -----------------------------------------------------------
    def kinds(self, incident_id: int) -> builtins.list[str]:
        return [str(e.kind) for e in self.timeline(incident_id)]
