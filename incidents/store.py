"""The incident record in PostgreSQL: incidents, their timeline, and approvals.

`RUNBOOKS_DATABASE_URL` names the database (default: a `runbooks` database on the local
server, created when missing). The schema is created idempotently on first use.
"""

from __future__ import annotations

import builtins
import os
import secrets
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from incidents.models import Incident, Severity, Status, TimelineEvent

Row = dict[str, Any]  # rows come back as dicts (psycopg's dict_row)

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/runbooks"
_OPTIONS = "-c statement_timeout=10000 -c lock_timeout=5000"

SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id            BIGSERIAL PRIMARY KEY,
    dedup_key     TEXT NOT NULL,
    scenario      TEXT NOT NULL,
    service       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    severity      TEXT NOT NULL CHECK (severity IN ('P0', 'P1', 'P2', 'P3')),
    status        TEXT NOT NULL,
    title         TEXT NOT NULL,
    detected_by   TEXT NOT NULL DEFAULT 'runbook',
    github_repo   TEXT,
    github_issue  INTEGER,
    issue_url     TEXT,
    flow_run_id   TEXT,
    alert         JSONB,
    opened_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    acknowledged_at TIMESTAMPTZ,
    recovered_at  TIMESTAMPTZ,
    resolved_at   TIMESTAMPTZ,
    root_cause    TEXT,
    resolution    TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS incidents_one_open_per_key ON incidents (dedup_key) WHERE resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS timeline_events (
    id          BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    actor       TEXT NOT NULL,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL,
    data        JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS timeline_by_incident ON timeline_events (incident_id, at);
CREATE TABLE IF NOT EXISTS approvals (
    id           BIGSERIAL PRIMARY KEY,
    incident_id  BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    plan_digest  TEXT NOT NULL,
    plan         JSONB NOT NULL,
    flow_run_id  TEXT,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    decided_at   TIMESTAMPTZ,
    decision     TEXT CHECK (decision IN ('approved', 'declined', 'timed_out')),
    approver     TEXT,
    reason       TEXT,
    automatic    BOOLEAN NOT NULL DEFAULT false
);
-- the lifecycle: acknowledgment, escalation level, the last Status Update (for its cadence)
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS started_at TIMESTAMPTZ;  -- the alert's startsAt, else opened_at
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS acknowledged_by TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS escalation_level INTEGER NOT NULL DEFAULT 0;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS escalated_at TIMESTAMPTZ;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS eta TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS impact TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS users_affected TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS last_update_at TIMESTAMPTZ;
-- crash-safe approvals: what a resumed (suspended) run needs, and a log that makes every
-- approved action run once, whatever retries, re-runs or resumptions happen
ALTER TABLE approvals ADD COLUMN IF NOT EXISTS deadline_at TIMESTAMPTZ;
ALTER TABLE approvals ADD COLUMN IF NOT EXISTS findings JSONB;
CREATE INDEX IF NOT EXISTS approvals_by_run ON approvals (flow_run_id);
CREATE TABLE IF NOT EXISTS action_log (
    plan_digest   TEXT NOT NULL,
    action_digest TEXT NOT NULL,
    incident_id   BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('started', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 1,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    detail        TEXT,
    PRIMARY KEY (plan_digest, action_digest)
);
-- verified approvals: who approved, checked against their own credential
ALTER TABLE approvals ADD COLUMN IF NOT EXISTS attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN IF NOT EXISTS verified BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE IF NOT EXISTS approval_signatures (
    approval_id BIGINT NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
    approver    TEXT NOT NULL,
    decision    TEXT NOT NULL CHECK (decision IN ('approve', 'decline')),
    reason      TEXT,
    signed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (approval_id, approver)
);
-- the post-incident process
CREATE TABLE IF NOT EXISTS postmortems (
    incident_id      BIGINT PRIMARY KEY REFERENCES incidents (id) ON DELETE CASCADE,
    flow_run_id      TEXT,
    requested_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    completed_by     TEXT,
    root_cause       TEXT,
    lessons          JSONB,
    markdown         TEXT,
    last_reminded_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS action_items (
    id               BIGSERIAL PRIMARY KEY,
    incident_id      BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    title            TEXT NOT NULL,
    owner            TEXT,
    horizon          TEXT NOT NULL CHECK (horizon IN ('24h', '1w')),
    due_at           TIMESTAMPTZ NOT NULL,
    repo             TEXT,
    issue_number     INTEGER,
    issue_url        TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at     TIMESTAMPTZ,
    last_reminded_at TIMESTAMPTZ,
    UNIQUE (incident_id, title)
);
CREATE TABLE IF NOT EXISTS playbook_proposals (
    id          BIGSERIAL PRIMARY KEY,
    incident_id BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    section     TEXT NOT NULL,
    proposal    TEXT NOT NULL,
    proposed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (incident_id, proposal)
);
CREATE TABLE IF NOT EXISTS drills (
    id            TEXT PRIMARY KEY,
    fault         TEXT NOT NULL,
    scenario      TEXT NOT NULL,
    environment   TEXT NOT NULL,
    service       TEXT NOT NULL,
    approval_mode TEXT NOT NULL CHECK (approval_mode IN ('auto', 'human')),
    approval_delay_seconds REAL NOT NULL DEFAULT 0,
    status        TEXT NOT NULL DEFAULT 'running',
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    flow_run_id   TEXT,
    scenario_run_id TEXT,
    incident_id   BIGINT,
    score         JSONB,
    error         TEXT
);
-- correlation: one open incident per outage (dedup_key is its correlation key), the alerts
-- that joined it (by identity: the fingerprint without replica labels), who announced it
-- (issue + Initial Alert, once), and which runbook holds each target
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS announced_at TIMESTAMPTZ;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS postmortem_needed BOOLEAN NOT NULL DEFAULT true;
CREATE TABLE IF NOT EXISTS incident_alerts (
    incident_id  BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    identity     TEXT NOT NULL,
    alertname    TEXT NOT NULL,
    severity     TEXT,
    status       TEXT NOT NULL CHECK (status IN ('firing', 'resolved')),
    starts_at    TEXT NOT NULL,
    first_seen   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen    TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at  TIMESTAMPTZ,
    flaps        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (incident_id, identity)
);
CREATE INDEX IF NOT EXISTS incident_alerts_by_start ON incident_alerts (identity, starts_at);
CREATE TABLE IF NOT EXISTS runbook_leases (
    target       TEXT PRIMARY KEY,
    flow_run_id  TEXT NOT NULL,
    incident_id  BIGINT NOT NULL,
    scenario     TEXT NOT NULL,
    taken_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- action claims belong to an incident: the same plan digest in another incident is a new action
DO $$ BEGIN
    IF (SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = 'action_log'::regclass AND i.indisprimary) = 2 THEN
        ALTER TABLE action_log DROP CONSTRAINT action_log_pkey,
                               ADD PRIMARY KEY (incident_id, plan_digest, action_digest);
    END IF;
    -- 'withdrawn': the alert resolved and stayed resolved (only the intake and the watch write it)
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'approvals_decision_check'
                   AND pg_get_constraintdef(oid) LIKE '%withdrawn%') THEN
        ALTER TABLE approvals DROP CONSTRAINT IF EXISTS approvals_decision_check,
            ADD CONSTRAINT approvals_decision_check
                CHECK (decision IN ('approved', 'declined', 'timed_out', 'withdrawn'));
    END IF;
END $$;
-- one Slack thread per incident (a Slack app's parent message), and what its parent shows now
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS slack_channel TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS slack_ts TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS slack_parent TEXT;
-- approval links carry a random token, not the sequential id
ALTER TABLE approvals ADD COLUMN IF NOT EXISTS token TEXT;
UPDATE approvals SET token = md5(random()::text || clock_timestamp()::text || id::text) WHERE token IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS approvals_by_token ON approvals (token);
-- the PagerDuty services an incident triggered (acknowledge and resolve go to each)
CREATE TABLE IF NOT EXISTS incident_pagers (
    incident_id  BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    pager        TEXT NOT NULL,
    triggered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, pager)
);
"""
# two Prometheus replicas evaluate the same rule this far apart at most (a later start is a re-fire)
REPLICA_SKEW_SECONDS = 60
_SCHEMA_LOCK = 7_310_224_001  # an advisory lock id: concurrent first uses create the schema once


class StoreError(Exception):
    """The incident store failed an operation: `StoreUnreachable` or `NotFound`."""


class StoreUnreachable(StoreError):
    """The store could not be reached, cut the connection off, or speaks something else."""


class NotFound(StoreError):
    """What was asked for is not in the store (a wrong id): retrying will not help."""


def database_url() -> str:
    return os.environ.get("RUNBOOKS_DATABASE_URL") or DEFAULT_DATABASE_URL


def connect_timeout() -> int:
    """Seconds to wait for the store (`RUNBOOKS_DATABASE_TIMEOUT`, default 5); PostgreSQL counts whole seconds."""
    try:
        return max(1, int(float(os.environ.get("RUNBOOKS_DATABASE_TIMEOUT") or 5)))
    except ValueError:
        return 5


def _redacted(url: str) -> str:
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(unparsable connection string)"
    return f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"


def required_row(row: Row | None) -> Row:
    """The row a statement always returns (INSERT ... RETURNING, an UPDATE of a row just read)."""
    if row is None:
        raise StoreError("the incident store returned no row where one was certain")
    return row


class IncidentStore:
    _ready: set[str] = set()
    _ready_lock = threading.Lock()

    def __init__(self, url: str | None = None):
        self.url = url or database_url()
        self.where = _redacted(self.url)

    # -- connection and schema ----------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Row]]:
        self.ensure_schema()
        try:
            with psycopg.connect(self.url, connect_timeout=connect_timeout(), options=_OPTIONS,
                                 row_factory=dict_row) as conn:
                yield conn
        except psycopg.Error as exc:  # unreachable, cut off, or speaking something else
            raise StoreUnreachable(f"incident store at {self.where}: {str(exc).strip().splitlines()[0]}") from None

    def ensure_schema(self) -> None:
        with self._ready_lock:
            if self.url in self._ready:
                return
            try:
                self._create_database_if_missing()
                with psycopg.connect(self.url, connect_timeout=5, options=_OPTIONS) as conn:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    conn.execute(SCHEMA)
            except psycopg.Error as exc:
                raise StoreUnreachable(f"incident store at {self.where}: {str(exc).strip().splitlines()[0]}") from None
            self._ready.add(self.url)

    def _create_database_if_missing(self) -> None:
        params = conninfo_to_dict(self.url)
        dbname = params.get("dbname")
        if not dbname:
            return
        try:
            psycopg.connect(self.url, connect_timeout=5).close()
            return
        except psycopg.OperationalError as exc:
            if "does not exist" not in str(exc):
                raise
        admin = make_conninfo(self.url, dbname="postgres")
        with psycopg.connect(admin, connect_timeout=5, autocommit=True) as conn:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(dbname))))
            except psycopg.errors.DuplicateDatabase:
                pass

    # -- incidents ------------------------------------------------------------------------------
    def open_incident(self, *, dedup_key: str, scenario: str, service: str, environment: str, severity: Severity,
                      title: str, detected_by: str, flow_run_id: str | None, alert: dict[str, Any] | None,
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
                 detected_by, flow_run_id, Jsonb(alert) if alert is not None else None, started_at)).fetchone()
            created = row is not None
            if row is None:
                row = conn.execute("SELECT * FROM incidents WHERE dedup_key = %s AND resolved_at IS NULL",
                                   (dedup_key,)).fetchone()
            incident = _incident(required_row(row))
            incident.created = created
            return incident

    def get(self, incident_id: int) -> Incident:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        if row is None:
            raise NotFound(f"no incident {incident_id}")
        return _incident(row)

    def list(self, limit: int = 50, open_only: bool = False, environment: str | None = None) -> builtins.list[Incident]:
        where = (["resolved_at IS NULL"] if open_only else []) + (["environment = %s"] if environment else [])
        query = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "") + \
                " ORDER BY opened_at DESC LIMIT %s"
        with self._connect() as conn:
            return [_incident(r) for r in conn.execute(query, (*([environment] if environment else []), limit))]

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
    def slack_thread(self, incident_id: int) -> dict[str, Any] | None:
        """{channel, ts, parent} of the incident's Slack thread, or None before its first message."""
        with self._connect() as conn:
            row = conn.execute("SELECT slack_channel AS channel, slack_ts AS ts, slack_parent AS parent "
                               "FROM incidents WHERE id = %s", (incident_id,)).fetchone()
        return row if row and row["ts"] else None

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
    def add_event(
        self, incident_id: int, actor: str, kind: str, message: str, data: dict[str, Any] | None = None
    ) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO timeline_events (incident_id, actor, kind, message, data) VALUES (%s, %s, %s, %s, %s)",
                (incident_id, actor, kind, message, Jsonb(data or {})),
            )

    def timeline(self, incident_id: int) -> builtins.list[TimelineEvent]:
        with self._connect() as conn:
            rows = conn.execute("SELECT at, actor, kind, message, data FROM timeline_events "
                                "WHERE incident_id = %s ORDER BY at, id", (incident_id,)).fetchall()
        return [TimelineEvent(**r) for r in rows]

    # -- approvals ------------------------------------------------------------------------------
    def request_approval(self, incident_id: int, plan_digest: str, plan: dict[str, Any], flow_run_id: str | None,
                         deadline_at: datetime | None = None, findings: dict[str, Any] | None = None) -> int:
        with self._connect() as conn:
            row = conn.execute("INSERT INTO approvals (incident_id, plan_digest, plan, flow_run_id, deadline_at, "
                               "findings, token) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
                               (incident_id, plan_digest, Jsonb(plan), flow_run_id, deadline_at,
                                Jsonb(findings) if findings is not None else None,
                                secrets.token_urlsafe(18))).fetchone()
        return int(required_row(row)["id"])

    def approval_for_run(self, flow_run_id: str) -> dict[str, Any] | None:
        """The latest approval a flow run asked for: a resumed run continues from it."""
        with self._connect() as conn:
            return conn.execute("SELECT * FROM approvals WHERE flow_run_id = %s ORDER BY id DESC LIMIT 1",
                                (flow_run_id,)).fetchone()

    def incident_for_run(self, flow_run_id: str) -> Incident | None:
        """The incident a flow run opened, or asked an approval for (a run may join an open one)."""
        with self._connect() as conn:
            row = conn.execute("""SELECT * FROM incidents WHERE id = (
                                      SELECT max(id) FROM (SELECT id FROM incidents WHERE flow_run_id = %s
                                                           UNION SELECT incident_id FROM approvals
                                                           WHERE flow_run_id = %s) AS mine)""",
                               (flow_run_id, flow_run_id)).fetchone()
        return _incident(row) if row else None

    def expired_approvals(self, environment: str, now: datetime) -> builtins.list[dict[str, Any]]:
        """Pending approvals past their deadline (their runs may be suspended: nobody else ends them)."""
        with self._connect() as conn:
            return conn.execute("""SELECT a.* FROM approvals a JOIN incidents i ON i.id = a.incident_id
                                   WHERE i.environment = %s AND a.decision IS NULL AND a.deadline_at <= %s
                                     AND a.flow_run_id IS NOT NULL ORDER BY a.id""", (environment, now)).fetchall()

    def waiting_approvals(self, environment: str, older_than_seconds: float = 30.0) -> builtins.list[dict[str, Any]]:
        """Pending approvals of runs, asked for at least this long ago (the watch checks their runs)."""
        with self._connect() as conn:
            return conn.execute("""SELECT a.* FROM approvals a JOIN incidents i ON i.id = a.incident_id
                                   WHERE i.environment = %s AND a.decision IS NULL AND a.flow_run_id IS NOT NULL
                                     AND a.requested_at <= now() - make_interval(secs => %s) ORDER BY a.id""",
                                (environment, older_than_seconds)).fetchall()

    # -- the action log: each approved action once ------------------------------------------------
    def begin_action(self, plan_digest: str, action_digest: str, incident_id: int, kind: str) -> dict[str, Any]:
        """Claim an approved action of this incident's plan. Returns the log row; `first` is False
        when the action was seen before (done: skip it; started: it was interrupted, check
        before repeating). The same plan in another incident is another action."""
        with self._connect() as conn:
            row = conn.execute("""INSERT INTO action_log (plan_digest, action_digest, incident_id, kind, status)
                                  VALUES (%s, %s, %s, %s, 'started') ON CONFLICT DO NOTHING RETURNING *""",
                               (plan_digest, action_digest, incident_id, kind)).fetchone()
            if row is not None:
                return {**row, "first": True}
            row = conn.execute("""UPDATE action_log SET attempts = attempts + 1
                                  WHERE incident_id = %s AND plan_digest = %s AND action_digest = %s RETURNING *""",
                               (incident_id, plan_digest, action_digest)).fetchone()
            return {**required_row(row), "first": False}

    def finish_action(self, incident_id: int, plan_digest: str, action_digest: str, status: str, detail: str) -> None:
        with self._connect() as conn:
            conn.execute("UPDATE action_log SET status = %s, detail = %s, finished_at = now() "
                         "WHERE incident_id = %s AND plan_digest = %s AND action_digest = %s",
                         (status, detail, incident_id, plan_digest, action_digest))

    def action_log(self, incident_id: int) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM action_log WHERE incident_id = %s ORDER BY started_at",
                                (incident_id,)).fetchall()

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

    def approval(self, approval_id: int) -> dict[str, Any] | None:
        """An approval request with its incident's environment, severity and service."""
        with self._connect() as conn:
            return conn.execute("""SELECT a.*, i.environment, i.severity, i.service, i.github_issue, i.title
                                   FROM approvals a JOIN incidents i ON i.id = a.incident_id WHERE a.id = %s""",
                                (approval_id,)).fetchone()

    def approval_by_token(self, token: str) -> dict[str, Any] | None:
        """The approval a link names (its random token; ids are never accepted in links)."""
        with self._connect() as conn:
            return conn.execute("""SELECT a.*, i.environment, i.severity, i.service, i.github_issue, i.title
                                   FROM approvals a JOIN incidents i ON i.id = a.incident_id WHERE a.token = %s""",
                                (token,)).fetchone()

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

    def signatures(self, approval_id: int) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM approval_signatures WHERE approval_id = %s ORDER BY signed_at",
                                (approval_id,)).fetchall()

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

    def approvals(self, incident_id: int) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM approvals WHERE incident_id = %s ORDER BY id", (incident_id,)).fetchall()

    # -- correlation: alerts joining an incident, announcement, severity --------------------------
    def open_for_key(self, key: str) -> Incident | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT * FROM incidents WHERE dedup_key = %s AND resolved_at IS NULL", (key,)
            ).fetchone()
        return _incident(row) if row else None

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
            row = conn.execute("""UPDATE incidents i SET severity = %s FROM incidents old
                                  WHERE i.id = %s AND old.id = i.id AND i.resolved_at IS NULL AND i.severity > %s
                                  RETURNING old.severity""", (severity.value, incident_id, severity.value)).fetchone()
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

    def incident_alerts(self, incident_id: int) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM incident_alerts WHERE incident_id = %s ORDER BY first_seen",
                                (incident_id,)).fetchall()

    def incident_for_alert_start(self, identity: str, starts_at: str) -> Incident | None:
        """The incident an alert (identity + startsAt) opened or joined."""
        with self._connect() as conn:
            row = conn.execute("""SELECT i.* FROM incidents i JOIN incident_alerts a ON a.incident_id = i.id
                                  WHERE a.identity = %s AND a.starts_at = %s ORDER BY i.id DESC LIMIT 1""",
                               (identity, starts_at)).fetchone()
        return _incident(row) if row else None

    def quiet_approvals(
        self, environment: str | None, grace_seconds: float, now: datetime
    ) -> builtins.list[dict[str, Any]]:
        """Pending approvals of open incidents whose every alert resolved and stayed resolved for
        `grace_seconds`: the outage is over before anyone approved."""
        with self._connect() as conn:
            return conn.execute(
                """SELECT a.*, i.environment FROM approvals a JOIN incidents i ON i.id = a.incident_id
                   WHERE a.decision IS NULL AND a.flow_run_id IS NOT NULL AND i.resolved_at IS NULL
                     AND (%s::text IS NULL OR i.environment = %s)
                     AND EXISTS (SELECT 1 FROM incident_alerts x WHERE x.incident_id = i.id)
                     AND NOT EXISTS (SELECT 1 FROM incident_alerts x WHERE x.incident_id = i.id
                                     AND (x.status = 'firing' OR x.resolved_at > %s - make_interval(secs => %s)))
                   ORDER BY a.id""", (environment, environment, now, grace_seconds)).fetchall()

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
                   VALUES ('dry-run:' || gen_random_uuid(), %s, %s, %s, %s, %s, %s, 'dry run', %s, now(), now(),
                           now(), 'dry run: nothing was changed', false) RETURNING *""",
                (scenario, service, environment, severity.value, Status.RESOLVED.value, title, flow_run_id)).fetchone()
        return _incident(required_row(row))

    # -- runbook leases: one runbook acts on a target at a time ------------------------------------
    def take_lease(self, target: str, flow_run_id: str, incident_id: int, scenario: str,
                   holder_gone: Callable[[str], bool]) -> dict[str, Any]:
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
            return row
        with self._connect() as conn:
            taken = conn.execute("""UPDATE runbook_leases SET flow_run_id = %s, incident_id = %s, scenario = %s,
                                           taken_at = now() WHERE target = %s AND flow_run_id = %s RETURNING *""",
                                 (flow_run_id, incident_id, scenario, target, row["flow_run_id"])).fetchone()
            return taken or required_row(
                conn.execute("SELECT * FROM runbook_leases WHERE target = %s", (target,)).fetchone()
            )

    def release_lease(self, target: str, flow_run_id: str) -> bool:
        with self._connect() as conn:
            row = conn.execute("DELETE FROM runbook_leases WHERE target = %s AND flow_run_id = %s RETURNING target",
                               (target, flow_run_id)).fetchone()
        return row is not None

    def leases(self) -> builtins.list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM runbook_leases ORDER BY taken_at").fetchall()


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

    def drill(self, drill_id: str) -> dict[str, Any] | None:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM drills WHERE id = %s", (drill_id,)).fetchone()

    def finish_drill(self, drill_id: str, status: str, score: dict[str, Any] | None, error: str | None,
                     scenario_run_id: str | None, incident_id: int | None) -> None:
        with self._connect() as conn:
            conn.execute("""UPDATE drills SET status = %s, score = %s, error = %s, scenario_run_id = %s,
                                              incident_id = %s, finished_at = now() WHERE id = %s""",
                         (status, Jsonb(score) if score is not None else None, error, scenario_run_id, incident_id,
                          drill_id))

    def drill_history(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._connect() as conn:
            return conn.execute("SELECT * FROM drills WHERE finished_at IS NOT NULL "
                                "ORDER BY started_at DESC LIMIT %s", (limit,)).fetchall()

    def incident_for_alert(self, alert_key: str) -> Incident | None:
        """The incident an alert (`fingerprint:startsAt`) opened or joined."""
        identity, _, starts_at = alert_key.partition(":")
        return self.incident_for_alert_start(identity, starts_at)


def _incident(row: dict[str, Any]) -> Incident:
    return Incident(
        id=row["id"],
        dedup_key=row["dedup_key"],
        scenario=row["scenario"],
        service=row["service"],
        environment=row["environment"],
        severity=Severity(row["severity"]),
        status=Status(row["status"]),
        title=row["title"],
        opened_at=row["opened_at"],
        detected_by=row["detected_by"],
        github_repo=row["github_repo"],
        github_issue=row["github_issue"],
        issue_url=row["issue_url"],
        flow_run_id=row["flow_run_id"],
        alert=row["alert"],
        resolved_at=row["resolved_at"],
        root_cause=row["root_cause"],
        resolution=row["resolution"],
        started_at=row.get("started_at"),
        acknowledged_at=row.get("acknowledged_at"),
        acknowledged_by=row.get("acknowledged_by"),
        escalation_level=row.get("escalation_level") or 0,
        escalated_at=row.get("escalated_at"),
        recovered_at=row.get("recovered_at"),
        eta=row.get("eta"),
        impact=row.get("impact"),
        users_affected=row.get("users_affected"),
        last_update_at=row.get("last_update_at"),
        announced_at=row.get("announced_at"),
    )
