"""The post-incident record: post-mortems, action items, proposed playbook updates, and the
rows the success metrics are computed from. Same database as the incident store."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from incidents.followup_models import ActionItemRecord, Lesson, OverduePostmortem, Postmortem, Proposal
from incidents.store import DrillStore, IncidentStore, required_row
from incidents.success_metrics import MetricRow
from incidents.vocabulary import DetectedBy


class FollowUpStore(IncidentStore):
    # -- post-mortems ---------------------------------------------------------------------------
    def start_postmortem(self, incident_id: int, flow_run_id: str | None) -> bool:
        """Register the post-mortem of an incident; False if one was already requested."""
        with self._connect() as conn:
            row = conn.execute("INSERT INTO postmortems (incident_id, flow_run_id) VALUES (%s, %s) "
                               "ON CONFLICT (incident_id) DO NOTHING RETURNING incident_id",
                               (incident_id, flow_run_id)).fetchone()
            if row is None and flow_run_id:
                conn.execute("UPDATE postmortems SET flow_run_id = %s WHERE incident_id = %s AND completed_at IS NULL",
                             (flow_run_id, incident_id))
        return row is not None

    def postmortem(self, incident_id: int) -> Postmortem | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM postmortems WHERE incident_id = %s", (incident_id,)).fetchone()
        return Postmortem.from_row(row) if row else None

    def complete_postmortem(
        self,
        incident_id: int,
        by: str,
        root_cause: str,
        lessons: list[Lesson],
        markdown: str,
        users_affected: str | None,
    ) -> None:
        with self._connect() as conn:
            conn.execute(
                """INSERT INTO postmortems (incident_id, completed_at, completed_by, root_cause, lessons, markdown)
                            VALUES (%s, now(), %s, %s, %s, %s)
                            ON CONFLICT (incident_id) DO UPDATE
                                SET completed_at = COALESCE(postmortems.completed_at, now()),
                                completed_by = EXCLUDED.completed_by, root_cause = EXCLUDED.root_cause,
                                lessons = EXCLUDED.lessons, markdown = EXCLUDED.markdown""",
                (incident_id, by, root_cause, Jsonb([lesson.model_dump() for lesson in lessons]), markdown),
            )
            conn.execute("UPDATE incidents SET root_cause = %s, users_affected = COALESCE(%s, users_affected) "
                         "WHERE id = %s", (root_cause, users_affected, incident_id))

    def overdue_postmortems(
        self, environment: str, now: datetime, due: timedelta, remind_every: timedelta
    ) -> list[OverduePostmortem]:
        """Resolved incidents whose post-mortem is not done `due` after resolution, not reminded lately."""
        with self._connect() as conn:
            rows = conn.execute(
                """SELECT i.id, p.flow_run_id AS postmortem_run
                   FROM incidents i LEFT JOIN postmortems p ON p.incident_id = i.id
                   WHERE i.environment = %s AND i.resolved_at IS NOT NULL AND i.resolved_at + %s <= %s
                     AND p.completed_at IS NULL AND NOT COALESCE(i.alert -> 'labels' ? 'drill_id', false)
                     AND i.postmortem_needed
                     AND (p.last_reminded_at IS NULL OR p.last_reminded_at + %s <= %s)
                   ORDER BY i.resolved_at""", (environment, due, now, remind_every, now)).fetchall()
        return [OverduePostmortem(row["id"], row["postmortem_run"]) for row in rows]

    def postmortem_reminded(self, incident_id: int, now: datetime) -> None:
        with self._connect() as conn:
            conn.execute("""INSERT INTO postmortems (incident_id, last_reminded_at) VALUES (%s, %s)
                            ON CONFLICT (incident_id) DO UPDATE SET last_reminded_at = EXCLUDED.last_reminded_at""",
                         (incident_id, now))

    # -- action items ---------------------------------------------------------------------------
    def add_action_item(
        self, incident_id: int, title: str, owner: str | None, horizon: str, due_at: datetime
    ) -> ActionItemRecord:
        """Record an action item once; the same title for the same incident is the same item."""
        with self._connect() as conn:
            row = conn.execute("""INSERT INTO action_items (incident_id, title, owner, horizon, due_at)
                                  VALUES (%s, %s, %s, %s, %s) ON CONFLICT (incident_id, title) DO NOTHING
                                  RETURNING *""", (incident_id, title, owner, horizon, due_at)).fetchone()
            return ActionItemRecord.from_row(row or required_row(
                conn.execute("SELECT * FROM action_items WHERE incident_id = %s AND title = %s",
                             (incident_id, title)).fetchone()))

    def attach_action_issue(self, item_id: int, repo: str, number: int, url: str) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE action_items SET repo = %s, issue_number = %s, issue_url = %s WHERE id = %s",
                         (repo, number, url, item_id))

    def action_items(self, incident_id: int | None = None, environment: str | None = None,
                     open_only: bool = False) -> list[ActionItemRecord]:
        where: list[str] = []
        args: list[Any] = []
        if incident_id is not None:
            where.append("a.incident_id = %s")
            args.append(incident_id)
        if environment is not None:
            where.append("i.environment = %s")
            args.append(environment)
        if open_only:
            where.append("a.completed_at IS NULL")
        query = ("SELECT a.*, i.environment, i.service, i.github_issue AS incident_issue FROM action_items a "
                 "JOIN incidents i ON i.id = a.incident_id" + (" WHERE " + " AND ".join(where) if where else "")
                 + " ORDER BY a.due_at, a.id")
        with self._connect() as conn:
            return [ActionItemRecord.from_row(row) for row in conn.execute(query, args).fetchall()]

    def complete_action_item(self, item_id: int, at: datetime) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE action_items SET completed_at = COALESCE(completed_at, %s) WHERE id = %s", (at, item_id)
            )

    def action_item_reminded(self, item_id: int, now: datetime) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE action_items SET last_reminded_at = %s WHERE id = %s", (now, item_id))

    # -- playbook feedback ----------------------------------------------------------------------
    def propose(self, incident_id: int, section: str, proposal: str) -> None:
        with self._connect() as conn:
            conn.execute("INSERT INTO playbook_proposals (incident_id, section, proposal) VALUES (%s, %s, %s) "
                         "ON CONFLICT (incident_id, proposal) DO NOTHING", (incident_id, section, proposal))

    def proposals(self, environment: str | None = None) -> list[Proposal]:
        query = ("SELECT p.*, i.service, i.severity, i.github_issue, i.issue_url FROM playbook_proposals p "
                 "JOIN incidents i ON i.id = p.incident_id" + (" WHERE i.environment = %s" if environment else "")
                 + " ORDER BY p.section, p.proposed_at")
        with self._connect() as conn:
            return [Proposal.from_row(row) for row in conn.execute(query, [environment] if environment else [])]

    # -- metrics --------------------------------------------------------------------------------
    def metric_rows(self, environment: str, since: datetime | None = None) -> list[MetricRow]:
        """Every incident of the environment (drills flagged) with its post-mortem completion."""
        with self._connect() as conn:
            rows = conn.execute(
                """SELECT i.id, i.severity, i.detected_by,
                          i.alert IS NOT NULL AND i.detected_by <> %s AS from_alert,
                          COALESCE(i.alert -> 'labels' ? 'drill_id', false) AS drill,
                          COALESCE(i.started_at, i.opened_at) AS started_at, i.opened_at, i.acknowledged_at,
                          i.recovered_at, i.resolved_at, p.completed_at AS postmortem_at,
                          d.due_at AS summary_due, d.done_at AS summary_at
                   FROM incidents i LEFT JOIN postmortems p ON p.incident_id = i.id
                   LEFT JOIN incident_duties d ON d.incident_id = i.id AND d.duty = 'summary_24h' AND d.slot = ''
                   WHERE i.environment = %s AND (%s::timestamptz IS NULL OR COALESCE(i.started_at, i.opened_at) >= %s)
                     AND i.detected_by <> %s
                   ORDER BY i.id""", (DetectedBy.SLACK, environment, since, since, DetectedBy.DRY_RUN)).fetchall()
        return [MetricRow(**row) for row in rows]


class RunbookStore(FollowUpStore, DrillStore):
    """Everything a run keeps: incidents, approvals and the action log, follow-ups and drills.
    The store the wiring hands a run (`RunContext.store()`)."""
