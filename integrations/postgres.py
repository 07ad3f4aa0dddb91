"""PostgreSQL diagnosis and session control through psycopg. Every query runs under a
statement timeout; a session is only ever signalled if it is still the same backend the plan
named (pid and backend start), never our own, and never a superuser's unless asked."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from integrations.errors import IntegrationError, Refused, TimedOut, Unreachable


@dataclass(frozen=True)
class Session:
    pid: int
    role: str
    superuser: bool
    state: str | None
    backend_start: datetime
    seconds_in_state: float
    seconds_in_xact: float | None
    seconds_in_query: float | None
    wait_event_type: str | None
    blocked_by: tuple[int, ...]
    query: str

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.role}{', superuser' if self.superuser else ''})"
        return f"{who} {self.state or 'unknown'} for {self.seconds_in_state:.0f} s: {self.query[:120]}"


@dataclass(frozen=True)
class Connections:
    used: int
    max_connections: int
    reserved: int
    by_role: dict[str, tuple[int, int]] = field(default_factory=dict)  # role -> (used, limit or -1)

    @property
    def usable(self) -> int:
        return self.max_connections - self.reserved

    def pressure(self) -> list[tuple[str, int, int]]:
        """(scope, used, limit) for the server and for every role with a connection limit."""
        scopes = [("server", self.used, self.usable)]
        scopes += [(f"role {r}", u, lim) for r, (u, lim) in sorted(self.by_role.items()) if lim >= 0]
        return scopes


@dataclass(frozen=True)
class Replica:
    """A standby as the primary's pg_stat_replication shows it."""

    application_name: str
    client_addr: str | None
    state: str | None
    sync_state: str | None
    replay_lag_seconds: float | None  # None: no lag measured yet

    def describe(self) -> str:
        return f"{self.application_name} {self.client_addr} {self.state} lag {self.replay_lag_seconds}"


@dataclass(frozen=True)
class Replication:
    role: str  # primary | replica
    replicas: list[Replica] = field(default_factory=list)
    replay_lag_seconds: float | None = None


def root_blockers(sessions: list[Session]) -> dict[int, list[int]]:
    """The sessions at the root of blocking chains: they block others and wait on nobody.
    Returns root pid -> every pid waiting on it, directly or through others."""
    blocked_by = {s.pid: set(s.blocked_by) for s in sessions if s.blocked_by}
    roots: dict[int, list[int]] = {}
    for waiter in blocked_by:
        seen, frontier = set(), set(blocked_by[waiter])
        while frontier:
            pid = frontier.pop()
            if pid in seen:
                continue
            seen.add(pid)
            if blocked_by.get(pid):
                frontier |= blocked_by[pid]
            else:
                roots.setdefault(pid, [])
                if waiter not in roots[pid]:
                    roots[pid].append(waiter)
    return {pid: sorted(waiters) for pid, waiters in roots.items()}


_SESSIONS = """
SELECT a.pid, a.usename AS role, COALESCE(r.rolsuper, false) AS superuser, a.state, a.backend_start,
       EXTRACT(EPOCH FROM now() - COALESCE(a.state_change, a.backend_start))::float AS seconds_in_state,
       EXTRACT(EPOCH FROM now() - a.xact_start)::float AS seconds_in_xact,
       EXTRACT(EPOCH FROM now() - a.query_start)::float AS seconds_in_query,
       a.wait_event_type, pg_blocking_pids(a.pid) AS blocked_by, COALESCE(a.query, '') AS query
FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() AND a.datname = current_database()
ORDER BY a.backend_start
"""


class Postgres(Protocol):
    """What the runbooks ask of a service's PostgreSQL. PostgresClient is the real one; the
    unit tier's fake (tests/fakes.py) implements the same, and mypy holds both to it."""

    def ping(self) -> float: ...

    def sessions(self) -> list[Session]: ...

    def connections(self) -> Connections: ...

    def replication(self) -> Replication: ...

    def signal(self, sessions: list[tuple[int, str]], how: str, allow_superuser: bool = False) -> dict[int, str]: ...


class PostgresClient:
    def __init__(self, dsn: str, *, statement_timeout_ms: int = 5000, connect_timeout: int = 3):
        self._dsn = dsn
        params = conninfo_to_dict(dsn)
        self.where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout = connect_timeout

    def _connect(self) -> psycopg.Connection[dict[str, Any]]:
        try:
            return psycopg.connect(
                self._dsn,
                connect_timeout=self.connect_timeout,
                autocommit=True,
                row_factory=dict_row,
                options=f"-c statement_timeout={self.statement_timeout_ms} -c lock_timeout=2000",
                application_name="runbooks-diagnosis",
            )
        except psycopg.Error as exc:
            raise _error(f"PostgreSQL {self.where}", exc) from None

    def _query(self, what: str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        try:
            with self._connect() as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            raise _error(f"PostgreSQL {self.where} ({what})", exc) from None

    def ping(self) -> float:
        """pg_isready, from the client side: seconds to connect and answer."""
        import time

        start = time.monotonic()
        self._query("ping", "SELECT 1")
        return time.monotonic() - start

    def sessions(self) -> list[Session]:
        rows = self._query("sessions", _SESSIONS)
        return [Session(**{**r, "blocked_by": tuple(r["blocked_by"] or ())}) for r in rows]

    def connections(self) -> Connections:
        rows = self._query("connections", """
            SELECT current_setting('max_connections')::int AS max_connections,
                   current_setting('superuser_reserved_connections')::int AS reserved,
                   (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int AS used""")
        roles = self._query("connections by role", """
            SELECT r.rolname AS role, r.rolconnlimit AS limit,
                   (SELECT count(*) FROM pg_stat_activity a WHERE a.usesysid = r.oid
                      AND a.backend_type = 'client backend')::int AS used
            FROM pg_roles r WHERE r.rolconnlimit >= 0 OR r.oid IN
                (SELECT usesysid FROM pg_stat_activity WHERE datname = current_database())""")
        return Connections(by_role={r["role"]: (r["used"], r["limit"]) for r in roles}, **rows[0])

    def replication(self) -> Replication:
        if self._query("recovery", "SELECT pg_is_in_recovery() AS replica")[0]["replica"]:
            lag = self._query(
                "replay lag", "SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float AS lag"
            )
            return Replication("replica", replay_lag_seconds=lag[0]["lag"])
        replicas = self._query("replication", """
            SELECT application_name, client_addr::text AS client_addr, state, sync_state,
                   EXTRACT(EPOCH FROM replay_lag)::float AS replay_lag_seconds FROM pg_stat_replication""")
        return Replication("primary", replicas=[Replica(**row) for row in replicas])

    def signal(self, sessions: list[tuple[int, str]], how: str, allow_superuser: bool = False) -> dict[int, str]:
        """Terminate or cancel backends given as (pid, backend_start ISO). Each is checked
        again first: same backend, not us, not a superuser unless allowed. Returns pid -> outcome."""
        if how not in ("terminate", "cancel"):
            raise ValueError(f"how must be terminate or cancel, got {how!r}")
        fn = "pg_terminate_backend(a.pid, 5000)" if how == "terminate" else "pg_cancel_backend(a.pid)"
        outcomes: dict[int, str] = {}
        try:
            with self._connect() as conn:
                for pid, started in sessions:
                    row = conn.execute(
                        """SELECT a.pid, COALESCE(r.rolsuper, false) AS superuser,
                                   a.backend_start = %s::timestamptz AS same, a.pid = pg_backend_pid() AS ours
                            FROM pg_stat_activity a LEFT JOIN pg_roles r ON r.oid = a.usesysid
                            WHERE a.pid = %s""", (started, pid)).fetchone()
                    if row is None or not row["same"]:
                        outcomes[pid] = "gone (already ended)"
                    elif row["ours"]:
                        outcomes[pid] = "refused: our own session"
                    elif row["superuser"] and not allow_superuser:
                        outcomes[pid] = "refused: superuser session"
                    else:
                        done = conn.execute(f"SELECT {fn} AS ok FROM pg_stat_activity a WHERE a.pid = %s",
                                            (pid,)).fetchone()
                        outcomes[pid] = f"{how}d" if done and done["ok"] else f"{how} failed"
        except psycopg.Error as exc:
            raise _error(f"PostgreSQL {self.where} ({how} backends)", exc) from None
        return outcomes


def _error(what: str, exc: psycopg.Error) -> IntegrationError:
    """No connection: Unreachable (TimedOut when the connect timed out); a statement timeout:
    TimedOut; any other error the server answered with (it has a SQLSTATE): Refused."""
    reason = _first_line(exc)
    if isinstance(exc, (psycopg.errors.ConnectionTimeout, psycopg.errors.QueryCanceled)):
        return TimedOut(what, reason, transient=True)
    if exc.sqlstate is None:
        return Unreachable(what, reason, transient=True)
    return Refused(what, reason)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
