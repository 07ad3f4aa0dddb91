"""Approvals and the action log in the incident store: each plan's request and answer, the
verified signatures, and each approved action claimed once."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from psycopg.types.json import Jsonb

from incidents.findings import Finding, findings_record
from incidents.models import ActionRecord, Approval, EventKind, Incident, Signature
from incidents.plans import Plan
from incidents.store_base import StoreBase, incident_from_row, required_row


@dataclass(frozen=True)
class WaitingApprovals:
    """The unanswered approvals of one environment."""

    environment: str
    waiting: int
    overdue: int
    oldest_seconds: float


class ApprovalRecords(StoreBase):
    # -- approvals ------------------------------------------------------------------------------
    def request_approval(self, incident_id: int, plan: Plan, flow_run_id: str | None,
                         deadline_at: datetime | None = None, findings: Mapping[str, Finding] | None = None) -> int:
        with self._connect() as conn:
            row = conn.execute("INSERT INTO approvals (incident_id, plan_digest, plan, flow_run_id, deadline_at, "
                               "findings, token) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                               (incident_id, plan.digest, Jsonb(plan.to_dict()), flow_run_id, deadline_at,
                                Jsonb(findings_record(findings)) if findings is not None else None,
                                secrets.token_urlsafe(18))).fetchone()
        return int(required_row(row)["id"])

    def approval_for_run(self, flow_run_id: str) -> Approval | None:
        """The latest approval a flow run asked for: a resumed run continues from it."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM approvals WHERE flow_run_id = %s ORDER BY id DESC LIMIT 1",
                               (flow_run_id,)).fetchone()
        return Approval.from_row(row) if row else None

    def incident_for_run(self, flow_run_id: str) -> Incident | None:
        """The incident a flow run opened, joined (an open one for the same outage), or asked an
        approval for."""
        with self._connect() as conn:
            row = conn.execute("""SELECT * FROM incidents WHERE id = (
                                      SELECT max(id) FROM (SELECT id FROM incidents WHERE flow_run_id = %s
                                                           UNION SELECT incident_id FROM approvals
                                                           WHERE flow_run_id = %s
                                                           UNION SELECT incident_id FROM timeline_events
                                                           WHERE kind = ANY(%s)
                                                             AND data->>'flow_run_id' = %s) AS mine)""",
                               (flow_run_id, flow_run_id, [EventKind.JOINED.value, EventKind.FLAP.value],
                                flow_run_id)).fetchone()
        return incident_from_row(row) if row else None

    def expired_approvals(self, environment: str, now: datetime) -> builtins.list[Approval]:
        """Pending approvals past their deadline (their runs may be suspended: nobody else ends them)."""
        with self._connect() as conn:
            rows = conn.execute("""SELECT a.* FROM approvals a JOIN incidents i ON i.id = a.incident_id
                                   WHERE i.environment = %s AND a.decision IS NULL AND a.deadline_at <= %s
                                     AND a.flow_run_id IS NOT NULL ORDER BY a.id""", (environment, now)).fetchall()
        return [Approval.from_row(row) for row in rows]

    def waiting_approvals(self, environment: str, older_than_seconds: float = 30.0) -> builtins.list[Approval]:
        """Pending approvals of runs, asked for at least this long ago (the watch checks their runs)."""
        with self._connect() as conn:
            rows = conn.execute("""SELECT a.* FROM approvals a JOIN incidents i ON i.id = a.incident_id
                                   WHERE i.environment = %s AND a.decision IS NULL AND a.flow_run_id IS NOT NULL
                                     AND a.requested_at <= now() - make_interval(secs => %s) ORDER BY a.id""",
                                (environment, older_than_seconds)).fetchall()
        return [Approval.from_row(row) for row in rows]

    def approvals_waiting(self) -> builtins.list[WaitingApprovals]:
        """Per environment: the approvals nobody has answered yet, how many are past their
        deadline, and how long the oldest has waited (the intake's /metrics)."""
        with self._connect() as conn:
            rows = conn.execute("""SELECT i.environment, count(*) AS waiting,
                                          count(*) FILTER (WHERE a.deadline_at <= now()) AS overdue,
                                          extract(epoch FROM now() - min(a.requested_at))::float AS oldest_seconds
                                   FROM approvals a JOIN incidents i ON i.id = a.incident_id
                                   WHERE a.decision IS NULL AND a.flow_run_id IS NOT NULL AND i.resolved_at IS NULL
                                   GROUP BY i.environment ORDER BY i.environment""").fetchall()
        return [WaitingApprovals(**row) for row in rows]

    # -- the action log: each approved action once ------------------------------------------------
    def begin_action(self, plan_digest: str, action_digest: str, incident_id: int, kind: str) -> ActionRecord:
        """Claim an approved action of this incident's plan. Returns the log row; `first` is False
        when the action was seen before (done: skip it; started: it was interrupted, check
        before repeating). The same plan in another incident is another action."""
        with self._connect() as conn:
            row = conn.execute("""INSERT INTO action_log (plan_digest, action_digest, incident_id, kind, status)
                                  VALUES (%s, %s, %s, %s, 'started') ON CONFLICT DO NOTHING RETURNING *""",
                               (plan_digest, action_digest, incident_id, kind)).fetchone()
            if row is not None:
                return ActionRecord.from_row(row, first=True)
            row = conn.execute("""UPDATE action_log SET attempts = attempts + 1
                                  WHERE incident_id = %s AND plan_digest = %s AND action_digest = %s RETURNING *""",
                               (incident_id, plan_digest, action_digest)).fetchone()
            return ActionRecord.from_row(required_row(row))

    def mark_acting(self, incident_id: int, plan_digest: str, action_digest: str) -> None:
        """The re-check passed and the remedy begins to change the target: from now on a repeat
        meets a target this action may already have changed (it checks for its own work instead)."""
        with self._connect() as conn:
            conn.execute("UPDATE action_log SET acting_at = COALESCE(acting_at, now()) "
                         "WHERE incident_id = %s AND plan_digest = %s AND action_digest = %s",
                         (incident_id, plan_digest, action_digest))

    def finish_action(self, incident_id: int, plan_digest: str, action_digest: str, status: str, detail: str) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE action_log SET status = %s, detail = %s, finished_at = now() "
                         "WHERE incident_id = %s AND plan_digest = %s AND action_digest = %s",
                         (status, detail, incident_id, plan_digest, action_digest))

    def action_log(self, incident_id: int) -> builtins.list[ActionRecord]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM action_log WHERE incident_id = %s ORDER BY started_at",
                                (incident_id,)).fetchall()
        return [ActionRecord.from_row(row) for row in rows]

    def decide_approval(self, approval_id: int, decision: str, approver: str | None, reason: str | None,
                        automatic: bool = False) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE approvals SET decision = %s, approver = %s, reason = %s, automatic = %s, "
                         "decided_at = now() WHERE id = %s AND decision IS NULL",
                         (decision, approver, reason, automatic, approval_id))
            if decision in ("approved", "declined"):  # a person answered: that acknowledges the incident
                conn.execute("UPDATE incidents SET acknowledged_at = COALESCE(acknowledged_at, now()), "
                             "acknowledged_by = COALESCE(acknowledged_by, %s) "
                             "WHERE id = (SELECT incident_id FROM approvals WHERE id = %s)", (approver, approval_id))

    def approval(self, approval_id: int) -> Approval | None:
        """An approval request with its incident's environment, severity and service."""
        with self._connect() as conn:
            row = conn.execute("""SELECT a.*, i.environment, i.severity, i.service, i.github_issue, i.title
                                  FROM approvals a JOIN incidents i ON i.id = a.incident_id WHERE a.id = %s""",
                               (approval_id,)).fetchone()
        return Approval.from_row(row) if row else None

    def approval_by_token(self, token: str) -> Approval | None:
        """The approval a link names (its random token; ids are never accepted in links)."""
        with self._connect() as conn:
            row = conn.execute("""SELECT a.*, i.environment, i.severity, i.service, i.github_issue, i.title
                                  FROM approvals a JOIN incidents i ON i.id = a.incident_id WHERE a.token = %s""",
                               (token,)).fetchone()
        return Approval.from_row(row) if row else None

    def unsign(self, approval_id: int, approver: str) -> bool:
        """Take back an answer the run never received (its resume failed): it may be given again."""
        with self._connect() as conn:
            row = conn.execute("DELETE FROM approval_signatures WHERE approval_id = %s AND approver = %s "
                               "RETURNING approver", (approval_id, approver)).fetchone()
        return row is not None

    def sign(self, approval_id: int, approver: str, decision: str, reason: str) -> bool:
        """A verified approver's answer; False if this approver already answered this request."""
        with self._connect() as conn:
            row = conn.execute("INSERT INTO approval_signatures (approval_id, approver, decision, reason) "
                               "VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING approver",
                               (approval_id, approver, decision, reason)).fetchone()
        return row is not None

    def signatures(self, approval_id: int) -> builtins.list[Signature]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM approval_signatures WHERE approval_id = %s ORDER BY signed_at",
                                (approval_id,)).fetchall()
        return [Signature.from_row(row) for row in rows]

    def next_attempt(self, approval_id: int) -> int:
        """An answer was not accepted (unverified): the gate asks again under a new pause key."""
        with self._connect() as conn:
            return int(
                required_row(
                    conn.execute(
                        "UPDATE approvals SET attempt = attempt + 1 WHERE id = %s RETURNING attempt", (approval_id,)
                    ).fetchone()
                )["attempt"]
            )

    def mark_verified(self, approval_id: int) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE approvals SET verified = true WHERE id = %s", (approval_id,))

    def approvals(self, incident_id: int) -> builtins.list[Approval]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM approvals WHERE incident_id = %s ORDER BY id", (incident_id,)).fetchall()
        return [Approval.from_row(row) for row in rows]

