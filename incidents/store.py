"""The incident record in PostgreSQL: incidents, their timeline, and approvals.

`RUNBOOKS_DATABASE_URL` names the database (default: a `runbooks` database on the local
server, created when missing). The schema is created idempotently on first use.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from incidents import timeline_payloads as payloads
from incidents.alerts import AlertParameter
from incidents.followup_models import Drill, Scorecard
from incidents.models import EventKind, Incident, Severity, SlackThread, Status, TimelineEvent
from incidents.redaction import redact, redact_data
from incidents.store_approvals import ApprovalRecords
from incidents.store_base import (
    DEFAULT_DATABASE_URL,
    REPLICA_SKEW_SECONDS,
    SCHEMA,
    RecordNotFound,
    Row,
    StoreError,
    StoreUnreachable,
    connect_timeout,
    database_url,
    incident_from_row,
    required_row,
)
from incidents.store_containment import ContainmentRecords
from incidents.store_correlation import CorrelationRecords
from incidents.store_duties import DutyRecords
from incidents.store_roles import RoleRecords
from incidents.timeline_payloads import Payload
from incidents.vocabulary import DetectedBy

__all__ = ["DEFAULT_DATABASE_URL", "REPLICA_SKEW_SECONDS", "SCHEMA", "DrillStore", "IncidentStore", "RecordNotFound",
           "Row", "StoreError", "StoreUnreachable", "connect_timeout", "database_url", "required_row"]


class IncidentStore(ApprovalRecords, CorrelationRecords, ContainmentRecords, RoleRecords, DutyRecords):
    """The incident record: incidents, their timeline, Slack thread and pagers (here), approvals
    and the action log (store_approvals), correlation and leases (store_correlation), standing
    containment (store_containment)."""

    # -- incidents ------------------------------------------------------------------------------
    def open_incident(self, *, dedup_key: str, scenario: str, service: str, environment: str, severity: Severity,
                      title: str, detected_by: DetectedBy, flow_run_id: str | None, alert: AlertParameter | None,
                      started_at: datetime | None = None) -> Incident:
        """Open an incident, or return the one already open under `dedup_key`. `started_at` is
        when the problem began (an alert's startsAt); it defaults to now, the opening."""
        with self._connect() as conn:
            row = conn.execute(
                """INSERT INTO incidents (dedup_key, scenario, service, environment, severity, status, title,
                                          detected_by, flow_run_id, alert, started_at, last_update_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, LEAST(COALESCE(%s, now()), now()), now())
                   ON CONFLICT (dedup_key) WHERE resolved_at IS NULL DO NOTHING
                   RETURNING *""",
                (dedup_key, scenario, service, environment, severity.value, Status.INVESTIGATING.value, title,
                 detected_by, flow_run_id, Jsonb(alert.as_dict()) if alert is not None else None,
                 started_at)).fetchone()
            created = row is not None
            if row is None:
                row = conn.execute("SELECT * FROM incidents WHERE dedup_key = %s AND resolved_at IS NULL",
                                   (dedup_key,)).fetchone()
            incident = incident_from_row(required_row(row))
            incident.created = created
            return incident

    def get(self, incident_id: int) -> Incident:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        if row is None:
            raise RecordNotFound(f"no incident {incident_id}")
        return incident_from_row(row)

    def list(self, limit: int = 50, open_only: bool = False, environment: str | None = None) -> builtins.list[Incident]:
        where = (["resolved_at IS NULL"] if open_only else []) + (["environment = %s"] if environment else [])
        query = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "") + \
                " ORDER BY opened_at DESC LIMIT %s"
        with self._connect() as conn:
            return [incident_from_row(r) for r in conn.execute(query, (*([environment] if environment else []), limit))]

    def attach_issue(self, incident_id: int, repo: str, number: int, url: str) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE incidents SET github_repo = %s, github_issue = %s, issue_url = %s WHERE id = %s",
                         (repo, number, url, incident_id))

    def set_status(self, incident_id: int, status: Status, **fields: Any) -> None:
        allowed = {"root_cause", "resolution", "recovered_at", "resolved_at", "severity", "eta", "impact",
                   "users_affected", "last_update_at"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"cannot set {sorted(unknown)} on an incident")
        assignments = [sql.SQL("status = %s")] + [sql.SQL("{} = %s").format(sql.Identifier(k)) for k in fields]
        query = sql.SQL("UPDATE incidents SET {} WHERE id = %s").format(sql.SQL(", ").join(assignments))
        with self._connect() as conn:
            conn.execute(query, (status.value, *fields.values(), incident_id))

    # -- acknowledgment, escalation, status cadence ----------------------------------------------
    def acknowledge(self, incident_id: int, by: str) -> bool:
        """Acknowledge an open incident (escalation stops); False if it already was, or is closed."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incidents SET acknowledged_at = now(), acknowledged_by = %s "
                               "WHERE id = %s AND acknowledged_at IS NULL AND resolved_at IS NULL RETURNING id",
                               (by, incident_id)).fetchone()
        return row is not None

    def escalate_to(self, incident_id: int, seen_level: int, level: int) -> bool:
        """Move an unacknowledged open incident from `seen_level` to `level`; False when another
        sweep got there first or it was acknowledged meanwhile (so nobody is paged twice)."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incidents SET escalation_level = %s, escalated_at = now() WHERE id = %s "
                               "AND escalation_level = %s AND acknowledged_at IS NULL AND resolved_at IS NULL "
                               "RETURNING id", (level, incident_id, seen_level)).fetchone()
        return row is not None

    def claim_status_update(self, incident_id: int, seen: datetime | None, now: datetime) -> bool:
        """Take the turn to post the periodic Status Update (once, whatever runs the sweep)."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incidents SET last_update_at = %s WHERE id = %s AND resolved_at IS NULL "
                               "AND last_update_at IS NOT DISTINCT FROM %s RETURNING id",
                               (now, incident_id, seen)).fetchone()
        return row is not None

    # -- Slack thread and pagers ------------------------------------------------------------------
    def slack_thread(self, incident_id: int) -> SlackThread | None:
        """The incident's Slack thread, or None before its first message."""
        with self._connect() as conn:
            row = conn.execute("SELECT slack_channel AS channel, slack_ts AS ts, slack_parent AS parent "
                               "FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        return SlackThread(row["channel"], row["ts"], row["parent"]) if row and row["ts"] else None

    def start_slack_thread(self, incident_id: int, channel: str, ts: str, parent: str) -> bool:
        """Record the thread's parent message; False when another message became the parent first."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incidents SET slack_channel = %s, slack_ts = %s, slack_parent = %s "
                               "WHERE id = %s AND slack_ts IS NULL RETURNING id",
                               (channel, ts, parent, incident_id)).fetchone()
        return row is not None

    def set_slack_parent(self, incident_id: int, seen: str, parent: str) -> bool:
        """Record the parent's new text, unless another update came first (then skip ours)."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incidents SET slack_parent = %s WHERE id = %s AND slack_parent = %s "
                               "RETURNING id", (parent, incident_id, seen)).fetchone()
        return row is not None

    def add_pager(self, incident_id: int, pager: str) -> bool:
        """Note that a PagerDuty service was triggered for the incident; False if it was already."""
        with self._connect() as conn:
            row = conn.execute("INSERT INTO incident_pagers (incident_id, pager) VALUES (%s, %s) "
                               "ON CONFLICT DO NOTHING RETURNING pager", (incident_id, pager)).fetchone()
        return row is not None

    def pagers(self, incident_id: int) -> builtins.list[str]:
        with self._connect() as conn:
            rows = conn.execute("SELECT pager FROM incident_pagers WHERE incident_id = %s ORDER BY triggered_at",
                                (incident_id,)).fetchall()
        return [r["pager"] for r in rows]

    # -- timeline -------------------------------------------------------------------------------
    def add_event(self, incident_id: int, actor: str, kind: EventKind, message: str,
                  data: Payload | None = None) -> None:
        """`data`: the kind's payload model (PAYLOADS); an unknown kind or another kind's
        payload is refused before anything is written. The actor, the message and the payload
        are redacted here, whoever writes: a person's reason (a Cancel, an answer, a command)
        is written by the web services and the CLI straight to the store."""
        kind = EventKind(kind)
        stored = redact_data(payloads.checked(kind, data).as_data())
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO timeline_events (incident_id, actor, kind, message, data) VALUES (%s, %s, %s, %s, %s)",
                (incident_id, redact(actor), kind.value, redact(message), Jsonb(stored)),
            )

    def timeline(self, incident_id: int) -> builtins.list[TimelineEvent]:
        with self._connect() as conn:
            rows = conn.execute("SELECT at, actor, kind, message, data FROM timeline_events "
                                "WHERE incident_id = %s ORDER BY at, id", (incident_id,)).fetchall()
        return [_event(row) for row in rows]


def _event(row: dict[str, Any]) -> TimelineEvent:
    kind = EventKind.read(row["kind"])
    return TimelineEvent(row["at"], row["actor"], kind, row["message"], payloads.read(kind, row["data"]))


class DrillStore(IncidentStore):
    """Drills: one row per game day run, the score it earned, and the history."""

    def start_drill(self, drill_id: str, fault: str, scenario: str, environment: str, service: str,
                    approval_mode: str, approval_delay_seconds: float, flow_run_id: str | None) -> None:
        with self._connect() as conn:
            conn.execute("""INSERT INTO drills (id, fault, scenario, environment, service, approval_mode,
                                                approval_delay_seconds, flow_run_id)
                            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)""",
                         (drill_id, fault, scenario, environment, service, approval_mode, approval_delay_seconds,
                          flow_run_id))

    def drill(self, drill_id: str) -> Drill | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM drills WHERE id = %s", (drill_id,)).fetchone()
        return Drill.from_row(row) if row else None

    def finish_drill(self, drill_id: str, status: str, score: Scorecard | None, error: str | None,
                     scenario_run_id: str | None, incident_id: int | None) -> None:
        with self._connect() as conn:
            conn.execute("""UPDATE drills SET status = %s, score = %s, error = %s, scenario_run_id = %s,
                                              incident_id = %s, finished_at = now() WHERE id = %s""",
                         (status, Jsonb(score.as_data()) if score is not None else None, error, scenario_run_id,
                          incident_id, drill_id))

    def drill_history(self, limit: int = 50) -> list[Drill]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM drills WHERE finished_at IS NOT NULL "
                                "ORDER BY started_at DESC LIMIT %s", (limit,)).fetchall()
        return [Drill.from_row(row) for row in rows]

    def incident_for_alert(self, alert_key: str) -> Incident | None:
        """The incident an alert (`fingerprint:startsAt`) opened or joined."""
        identity, _, starts_at = alert_key.partition(":")
        return self.incident_for_alert_start(identity, starts_at)
