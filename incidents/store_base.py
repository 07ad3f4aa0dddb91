"""The incident store's foundation: where it is, its schema (created idempotently on first
use), its errors, and the connection every record class uses."""

from __future__ import annotations

import hashlib
import os
import threading
from contextlib import contextmanager, suppress
from typing import Any, Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from incidents.errors import RunbookError
from incidents.models import Incident, Severity, Status
from incidents.store_connections import CHECK_SECONDS, IDLE, connect_when_free
from incidents.vocabulary import DetectedBy

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
-- the run that joined an open incident (incident_for_run)
CREATE INDEX IF NOT EXISTS timeline_by_joining_run ON timeline_events ((data->>'flow_run_id'))
    WHERE kind IN ('joined', 'flap');
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
-- who asked for a run's Cancel through the runbooks (the CLI, Slack): its on_cancellation hook
-- names the latest; a request Prefect refused is withdrawn, and rows are kept 30 days (store_correlation)
CREATE TABLE IF NOT EXISTS cancel_requests (
    id            BIGSERIAL PRIMARY KEY,
    flow_run_id   TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    requested_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS cancel_requests_by_run ON cancel_requests (flow_run_id, id);
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
    -- 'refused': the re-check found the target changed since the approval; that grant has ended
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'action_log_status_check'
                   AND pg_get_constraintdef(oid) LIKE '%refused%') THEN
        ALTER TABLE action_log DROP CONSTRAINT IF EXISTS action_log_status_check,
            ADD CONSTRAINT action_log_status_check CHECK (status IN ('started', 'done', 'failed', 'refused'));
    END IF;
    -- 'withdrawn': the alert resolved and stayed resolved (only the intake and the watch write it)
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'approvals_decision_check'
                   AND pg_get_constraintdef(oid) LIKE '%withdrawn%') THEN
        ALTER TABLE approvals DROP CONSTRAINT IF EXISTS approvals_decision_check,
            ADD CONSTRAINT approvals_decision_check
                CHECK (decision IN ('approved', 'declined', 'timed_out', 'withdrawn'));
    END IF;
END $$;
-- standing containment (blocks, raised log levels): recorded with an expiry and how to revert it
CREATE TABLE IF NOT EXISTS containments (
    id                   BIGSERIAL PRIMARY KEY,
    incident_id          BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    environment          TEXT NOT NULL,
    service              TEXT NOT NULL,
    kind                 TEXT NOT NULL,
    target               TEXT NOT NULL,
    params               JSONB NOT NULL,
    applied_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at           TIMESTAMPTZ NOT NULL,
    status               TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'lifted')),
    lifted_at            TIMESTAMPTZ,
    lifted_by            TEXT,
    note                 TEXT,
    expiry_asked_at      TIMESTAMPTZ,
    widening_reported_at TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS containments_active ON containments (environment) WHERE status = 'active';
-- when an attempt at an action began to act (after its re-check): before that, every attempt re-checks
ALTER TABLE action_log ADD COLUMN IF NOT EXISTS acting_at TIMESTAMPTZ;
-- one Slack thread per incident (a Slack app's parent message), and what its parent shows now
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS slack_channel TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS slack_ts TEXT;
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS slack_parent TEXT;
-- approval links carry a random token, not the sequential id
ALTER TABLE approvals ADD COLUMN IF NOT EXISTS token TEXT;
UPDATE approvals SET token = md5(random()::text || clock_timestamp()::text || id::text) WHERE token IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS approvals_by_token ON approvals (token);
-- who holds each of the playbook's incident roles for one incident (the config's rota until a
-- hand-over writes a row)
CREATE TABLE IF NOT EXISTS incident_roles (
    incident_id BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    role        TEXT NOT NULL,
    handle      TEXT NOT NULL,
    assigned_by TEXT NOT NULL,
    assigned_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (incident_id, role)
);
-- the incident roles' duties, each claimed once by whoever gets there first (two sweeps at the
-- same moment post nothing twice): the commander asked about a silent approval (slot: the
-- approval's id), the communications lead's stakeholder update drafts (slot: the cadence's
-- count), the 24-hour summary (due a day after the resolution; done when the comms lead sent it)
CREATE TABLE IF NOT EXISTS incident_duties (
    incident_id      BIGINT NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    duty             TEXT NOT NULL,
    slot             TEXT NOT NULL DEFAULT '',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    due_at           TIMESTAMPTZ,
    done_at          TIMESTAMPTZ,
    done_by          TEXT,
    last_reminded_at TIMESTAMPTZ,
    PRIMARY KEY (incident_id, duty, slot)
);
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
SCHEMA_FINGERPRINT = hashlib.sha256(SCHEMA.encode()).hexdigest()
_SCHEMA_TABLE = ("CREATE TABLE IF NOT EXISTS runbooks_schema "
                 "(one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), fingerprint TEXT NOT NULL)")
_RECORD_SCHEMA = ("INSERT INTO runbooks_schema (fingerprint) VALUES (%s) "
                  "ON CONFLICT (one) DO UPDATE SET fingerprint = excluded.fingerprint")


def _schema_in_place(conn: psycopg.Connection[Any]) -> bool:
    """The schema this code applies is the one the database has (its fingerprint is recorded)."""
    row = conn.execute("SELECT to_regclass('runbooks_schema') IS NOT NULL").fetchone()
    if not row or not row[0]:
        return False
    recorded = conn.execute("SELECT fingerprint FROM runbooks_schema").fetchone()
    return recorded is not None and recorded[0] == SCHEMA_FINGERPRINT


class StoreError(RunbookError):
    """The incident store failed an operation: `StoreUnreachable` or `RecordNotFound`."""


class StoreUnreachable(StoreError):
    """The store could not be reached, cut the connection off, or speaks something else."""

    transient = True


class RecordNotFound(StoreError):
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


class StoreBase:
    """The connection to the incident store, and its schema, created on first use."""

    _ready: set[str] = set()
    _ready_lock = threading.Lock()

    def __init__(self, url: str | None = None):
        self.url = url or database_url()
        self.where = _redacted(self.url)

    # -- connection and schema ----------------------------------------------------------------
    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Row]]:
        """A connection for one operation, committed at the end of the block (rolled back and
        closed if it raises). The process's last connection is reused if it is still alive
        (incidents/store_connections.py)."""
        self.ensure_schema()
        try:
            conn = IDLE.take(self.url, min(connect_timeout(), CHECK_SECONDS)) or self._new_connection()
            try:
                yield conn
                conn.commit()
            except BaseException:
                conn.close()  # the server rolls back what the operation began
                raise
            IDLE.give_back(self.url, conn)
        except psycopg.Error as exc:  # unreachable, cut off, or speaking something else
            raise StoreUnreachable(f"incident store at {self.where}: {str(exc).strip().splitlines()[0]}") from None

    def _new_connection(self) -> psycopg.Connection[Row]:
        return connect_when_free(self.url, connect_timeout(), options=_OPTIONS, row_factory=dict_row)

    def ensure_schema(self) -> None:
        """Apply SCHEMA once per database, not once per process: a process whose schema is in
        place only reads its fingerprint. (Applying it takes exclusive table locks even where
        nothing changes - ALTER TABLE ... ADD COLUMN IF NOT EXISTS does - and a run starting
        beside another run's write deadlocked against it.)"""
        with self._ready_lock:
            if self.url in self._ready:
                return
            try:
                try:
                    conn = connect_when_free(self.url, 5, options=_OPTIONS)
                except psycopg.OperationalError:
                    self._create_database_if_missing()  # or raises why not
                    conn = connect_when_free(self.url, 5, options=_OPTIONS)
                with conn:
                    if not _schema_in_place(conn):
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                        if not _schema_in_place(conn):  # another process may have applied it meanwhile
                            conn.execute(SCHEMA)
                            conn.execute(_SCHEMA_TABLE)
                            conn.execute(_RECORD_SCHEMA, (SCHEMA_FINGERPRINT,))
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
            failure = exc  # libpq gives a failed connection no SQLSTATE: the catalogue says if the database is missing
        admin = make_conninfo(self.url, dbname="postgres")
        try:
            with psycopg.connect(admin, connect_timeout=5, autocommit=True) as conn:
                if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                    raise failure  # it exists: the first failure is the answer
                with suppress(psycopg.errors.DuplicateDatabase):  # created by another process meanwhile
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(dbname))))
        except psycopg.Error:
            raise failure from None  # whatever the administrative connection met, the first failure is the answer


def incident_from_row(row: dict[str, Any]) -> Incident:
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
        detected_by=DetectedBy.read(row["detected_by"]),
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
