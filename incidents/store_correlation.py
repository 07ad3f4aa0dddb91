"""Correlation and leases in the incident store: the alerts of an incident, its announcement
and severity, the withdrawal of quiet approvals, and one runbook per target at a time."""

from __future__ import annotations

import builtins
from datetime import datetime, timedelta
from typing import Callable

from incidents.models import Approval, CancelRequest, Incident, IncidentAlert, Lease, Severity, Status
from incidents.redaction import redact
from incidents.store_base import REPLICA_SKEW_SECONDS, StoreBase, incident_from_row, required_row
from incidents.vocabulary import DetectedBy

# the title's "[P1] " prefix follows the severity (templates.issue_title_text writes it)
CANCEL_REQUESTS_KEPT = timedelta(days=30)  # who asked for a Cancel, kept well past any run's end
_RETITLED = "title = regexp_replace(i.title, '^\\[P[0-3]\\]', '[' || %s || ']')"


class CorrelationRecords(StoreBase):
    # -- correlation: alerts joining an incident, announcement, severity --------------------------
    def open_for_key(self, key: str) -> Incident | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM incidents WHERE dedup_key = %s AND resolved_at IS NULL", (key,)
            ).fetchone()
        return incident_from_row(row) if row else None

    def claim_announcement(self, incident_id: int) -> bool:
        """Take the one turn to announce an incident (its issue and Initial Alert)."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incidents SET announced_at = now() WHERE id = %s AND announced_at IS NULL "
                               "RETURNING id", (incident_id,)).fetchone()
        return row is not None

    def set_runbook_run(self, incident_id: int, flow_run_id: str) -> str:
        """Name the run that works the incident, unless one is named already; returns the named run."""
        with self._connect() as conn:
            return str(
                required_row(
                    conn.execute(
                        "UPDATE incidents SET flow_run_id = COALESCE(flow_run_id, %s) WHERE id = %s "
                        "RETURNING flow_run_id",
                        (flow_run_id, incident_id),
                    ).fetchone()
                )["flow_run_id"]
            )

    def raise_severity(self, incident_id: int, severity: Severity) -> Severity | None:
        """Raise an open incident to `severity` when that is more severe; the old severity, or None."""
        with self._connect() as conn:
            row = conn.execute(f"""UPDATE incidents i SET severity = %s, {_RETITLED} FROM incidents old
                                  WHERE i.id = %s AND old.id = i.id AND i.resolved_at IS NULL AND i.severity > %s
                                  RETURNING old.severity""", (severity.value, severity.value, incident_id,
                                                              severity.value)).fetchone()
        return Severity(row["severity"]) if row else None

    def set_severity(self, incident_id: int, severity: Severity) -> Severity | None:
        """Set an open incident's severity (a person's call: up or down); the old one, or None
        when it is closed or already `severity`."""
        with self._connect() as conn:
            row = conn.execute(f"""UPDATE incidents i SET severity = %s, {_RETITLED} FROM incidents old
                                  WHERE i.id = %s AND old.id = i.id AND i.resolved_at IS NULL AND i.severity <> %s
                                  RETURNING old.severity""", (severity.value, severity.value, incident_id,
                                                              severity.value)).fetchone()
        return Severity(row["severity"]) if row else None

    def record_alert(self, incident_id: int, identity: str, alertname: str, severity: str | None, starts_at: str
                     ) -> str:
        """An alert firing for the incident: 'new' (first time), 'refired' (it had resolved, or
        it fires with a start more than REPLICA_SKEW_SECONDS from the last one: a flap) or
        'repeat' (still firing: a resend, or a replica that evaluated it a moment apart)."""
        with self._connect() as conn:
            row = conn.execute(
                """INSERT INTO incident_alerts (incident_id, identity, alertname, severity, status, starts_at)
                   VALUES (%s, %s, %s, %s, 'firing', %s)
                   ON CONFLICT (incident_id, identity) DO UPDATE SET
                       last_seen = now(), starts_at = EXCLUDED.starts_at, status = 'firing', resolved_at = NULL,
                       flaps = incident_alerts.flaps + (incident_alerts.status = 'resolved')::int
                   RETURNING (xmax = 0) AS inserted,
                             (SELECT o.status = 'resolved' OR abs(extract(epoch FROM
                                         NULLIF(%s, '')::timestamptz - NULLIF(o.starts_at, '')::timestamptz)) > %s
                              FROM incident_alerts o WHERE o.incident_id = %s AND o.identity = %s) AS again""",
                (incident_id, identity, alertname, severity, starts_at, starts_at, REPLICA_SKEW_SECONDS, incident_id,
                 identity)).fetchone()
        if required_row(row)["inserted"]:
            return "new"
        return "refired" if required_row(row)["again"] else "repeat"

    def resolve_alert(self, incident_id: int, identity: str) -> bool:
        """The alert resolved at its source; False when it was not firing for this incident."""
        with self._connect() as conn:
            row = conn.execute("UPDATE incident_alerts SET status = 'resolved', resolved_at = now(), last_seen = now() "
                               "WHERE incident_id = %s AND identity = %s AND status = 'firing' RETURNING identity",
                               (incident_id, identity)).fetchone()
        return row is not None

    def incident_alerts(self, incident_id: int) -> builtins.list[IncidentAlert]:
        with self._connect() as conn:
            rows = conn.execute("SELECT * FROM incident_alerts WHERE incident_id = %s ORDER BY first_seen",
                                (incident_id,)).fetchall()
        return [IncidentAlert.from_row(row) for row in rows]

    def incident_for_alert_start(self, identity: str, starts_at: str) -> Incident | None:
        """The incident an alert (identity + startsAt) opened or joined."""
        with self._connect() as conn:
            row = conn.execute("""SELECT i.* FROM incidents i JOIN incident_alerts a ON a.incident_id = i.id
                                  WHERE a.identity = %s AND a.starts_at = %s ORDER BY i.id DESC LIMIT 1""",
                               (identity, starts_at)).fetchone()
        return incident_from_row(row) if row else None

    def quiet_approvals(
        self, environment: str | None, grace_seconds: float, now: datetime
    ) -> builtins.list[Approval]:
        """Pending approvals of open incidents whose every alert resolved and stayed resolved for
        `grace_seconds`: the outage is over before anyone approved."""
        with self._connect() as conn:
            rows = conn.execute(
                """SELECT a.*, i.environment FROM approvals a JOIN incidents i ON i.id = a.incident_id
                   WHERE a.decision IS NULL AND a.flow_run_id IS NOT NULL AND i.resolved_at IS NULL
                     AND (%s::text IS NULL OR i.environment = %s)
                     AND EXISTS (SELECT 1 FROM incident_alerts x WHERE x.incident_id = i.id)
                     AND NOT EXISTS (SELECT 1 FROM incident_alerts x WHERE x.incident_id = i.id
                                     AND (x.status = 'firing' OR x.resolved_at > %s - make_interval(secs => %s)))
                   ORDER BY a.id""", (environment, environment, now, grace_seconds)).fetchall()
        return [Approval.from_row(row) for row in rows]

    def withdraw_approval(self, approval_id: int, by: str, reason: str) -> bool:
        """Withdraw a pending approval (its alert resolved and stayed resolved). Never an
        acknowledgement; False when it was answered meanwhile."""
        with self._connect() as conn:
            row = conn.execute(
                "UPDATE approvals SET decision = 'withdrawn', approver = %s, reason = %s, automatic = true, "
                "decided_at = now() WHERE id = %s AND decision IS NULL RETURNING id",
                (by, reason, approval_id),
            ).fetchone()
        return row is not None

    def close(self, incident_id: int, root_cause: str, resolution: str, *, postmortem_needed: bool = True) -> bool:
        """Resolve an open incident (with or without a post-mortem to follow); False if it was not open."""
        with self._connect() as conn:
            row = conn.execute("""UPDATE incidents SET status = %s, root_cause = %s, resolution = %s,
                                         postmortem_needed = %s, recovered_at = COALESCE(recovered_at, now()),
                                         resolved_at = now()
                                  WHERE id = %s AND resolved_at IS NULL RETURNING id""",
                               (Status.RESOLVED.value, root_cause, resolution, postmortem_needed,
                                incident_id)).fetchone()
        return row is not None

    def record_dry_run(self, scenario: str, service: str, environment: str, severity: Severity, title: str,
                       flow_run_id: str | None) -> Incident:
        """A dry run's record: closed from the start, pages nobody, not counted by the metrics."""
        with self._connect() as conn:
            row = conn.execute(
                """INSERT INTO incidents (dedup_key, scenario, service, environment, severity, status, title,
                                          detected_by, flow_run_id, started_at, resolved_at, recovered_at,
                                          resolution, postmortem_needed)
                   VALUES ('dry-run:' || gen_random_uuid(), %s, %s, %s, %s, %s, %s, %s, %s, now(), now(),
                           now(), 'dry run: nothing was changed', false) RETURNING *""",
                (scenario, service, environment, severity.value, Status.RESOLVED.value, title, DetectedBy.DRY_RUN,
                 flow_run_id)).fetchone()
        return incident_from_row(required_row(row))

    # -- runbook leases: one runbook acts on a target at a time ------------------------------------
    def take_lease(self, target: str, flow_run_id: str, incident_id: int, scenario: str,
                   holder_gone: Callable[[str], bool]) -> Lease:
        """Take the target for this run. Returns the lease as it stands: this run's when taken
        (or already held), otherwise the holder's. A holder whose run is gone (`holder_gone`)
        loses the lease."""
        with self._connect() as conn:
            row = conn.execute("""INSERT INTO runbook_leases (target, flow_run_id, incident_id, scenario)
                                  VALUES (%s, %s, %s, %s)
                                  ON CONFLICT (target) DO UPDATE SET target = EXCLUDED.target RETURNING *""",
                               (target, flow_run_id, incident_id, scenario)).fetchone()
        row = required_row(row)
        if row["flow_run_id"] == flow_run_id or not holder_gone(row["flow_run_id"]):
            return Lease(**row)
        with self._connect() as conn:
            taken = conn.execute("""UPDATE runbook_leases SET flow_run_id = %s, incident_id = %s, scenario = %s,
                                           taken_at = now() WHERE target = %s AND flow_run_id = %s RETURNING *""",
                                 (flow_run_id, incident_id, scenario, target, row["flow_run_id"])).fetchone()
            return Lease(**(taken or required_row(
                conn.execute("SELECT * FROM runbook_leases WHERE target = %s", (target,)).fetchone()
            )))

    def release_lease(self, target: str, flow_run_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("DELETE FROM runbook_leases WHERE target = %s AND flow_run_id = %s RETURNING target",
                               (target, flow_run_id)).fetchone()
        return row is not None

    # -- who asked for a Cancel -----------------------------------------------------------------------
    def request_cancel(self, flow_run_id: str, requested_by: str, reason: str) -> int:
        """Written before the Cancel goes to Prefect; the latest request for a run stands. Returns
        the request's id, for `withdraw_cancel` if Prefect refuses it. Requests older than
        CANCEL_REQUESTS_KEPT are dropped here: by then their runs have long ended."""
        with self._connect() as conn:
            conn.execute("DELETE FROM cancel_requests WHERE requested_at < now() - %s", (CANCEL_REQUESTS_KEPT,))
            return int(required_row(conn.execute(
                "INSERT INTO cancel_requests (flow_run_id, requested_by, reason) VALUES (%s, %s, %s) RETURNING id",
                (flow_run_id, redact(requested_by), redact(reason))).fetchone())["id"])

    def withdraw_cancel(self, request_id: int) -> None:
        """A request Prefect refused: a later Cancel from the UI must not be put in its name."""
        with self._connect() as conn:
            conn.execute("DELETE FROM cancel_requests WHERE id = %s", (request_id,))

    def cancel_request(self, flow_run_id: str) -> CancelRequest | None:
        with self._connect() as conn:
            row = conn.execute("""SELECT flow_run_id, requested_by, reason, requested_at FROM cancel_requests
                                  WHERE flow_run_id = %s ORDER BY id DESC LIMIT 1""", (flow_run_id,)).fetchone()
        return CancelRequest(**row) if row else None

    def leases(self) -> builtins.list[Lease]:
        with self._connect() as conn:
            return [Lease(**row) for row in conn.execute("SELECT * FROM runbook_leases ORDER BY taken_at")]


