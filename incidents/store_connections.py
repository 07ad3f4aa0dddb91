"""The incident store's connections between operations, kept a moment for the next one.

A runbook touches the store some forty times on its way to an approval, in bursts a few
milliseconds apart. A new PostgreSQL connection costs about 6.5 ms of CPU (the backend's fork,
its authentication and catalogue caches, and libpq's side), a statement on an open one 0.3 ms:
so each process keeps its last connection per database for IDLE_SECONDS, then closes it.

- A connection is only kept when its operation committed and left it idle; one that met an
  error is closed.
- Before it is used again it must answer a round trip within CHECK_SECONDS, or the store's
  timeout if that is shorter (a server restarted, a proxy that cut it, a connection the server
  ended): otherwise it is closed and the operation connects afresh, meeting the store's connect
  timeout as it always did. A store that stops answering is reported at most CHECK_SECONDS later
  than before.
- Idle ones are closed by a daemon thread after IDLE_SECONDS, so a process holds no
  PostgreSQL connection slot when it is not using the store (50 runbooks at once on a server
  of max_connections 100 must not hold them).
- A forked child never uses or closes its parent's connections (the socket is shared: a close
  would end the parent's session); it starts with none (the warm worker forks its runs).
- A new connection that PostgreSQL refuses for want of a free slot (past max_connections or the
  role's CONNECTION LIMIT) is asked for again until the connect timeout, as in an alert storm
  the slots come free within moments (`connect_when_free`).
"""

from __future__ import annotations

import os
import random
import select
import threading
import time
from typing import Any

import psycopg
from psycopg import pq

IDLE_SECONDS = 2.0  # how long a connection waits for the next operation
# how long a kept connection may take to answer its check: an idle server answers in well under
# a millisecond, and one that does not answer then is met again by a fresh connect's own timeout
CHECK_SECONDS = 1.0
KEEP = 1  # idle connections kept per database per process; more in flight at once are closed on return


def alive(conn: psycopg.Connection[Any], timeout: float) -> bool:
    """Whether an idle connection answers an empty query within `timeout` seconds. (psycopg's
    own execute waits without a bound: a server that accepts but never answers would hang it.)"""
    if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return False
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    try:
        pgconn.send_query(b"")
        while pgconn.flush():
            if not _wait(pgconn.socket, deadline, write=True):
                return False
        while True:
            pgconn.consume_input()
            if not pgconn.is_busy():
                break
            if not _wait(pgconn.socket, deadline):
                return False
        ok = True
        while (result := pgconn.get_result()) is not None:
            ok = ok and result.status in (pq.ExecStatus.EMPTY_QUERY, pq.ExecStatus.COMMAND_OK)
        return ok and pgconn.status == pq.ConnStatus.OK
    except (psycopg.Error, OSError):
        return False


def _wait(fd: int, deadline: float, write: bool = False) -> bool:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return False
    ready = select.select([], [fd], [], remaining)[1] if write else select.select([fd], [], [], remaining)[0]
    return bool(ready)


class IdleConnections:
    """Per process and database, the connections that finished an operation in the last
    IDLE_SECONDS; `take` hands one out (checked alive), `give_back` keeps it or closes it."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS, keep: int = KEEP) -> None:
        self.idle_seconds, self.keep = idle_seconds, keep
        self._lock = threading.Lock()
        self._idle: dict[str, list[tuple[float, psycopg.Connection[Any]]]] = {}
        self._closer: threading.Thread | None = None
        self._wake = threading.Condition(self._lock)

    def take(self, url: str, timeout: float) -> psycopg.Connection[Any] | None:
        """An idle connection to `url` that answered a round trip just now, or None."""
        while True:
            with self._lock:
                waiting = self._idle.get(url)
                if not waiting:
                    return None
                _, conn = waiting.pop()
            if alive(conn, timeout):
                return conn
            _close(conn)

    def give_back(self, url: str, conn: psycopg.Connection[Any]) -> None:
        """Keep a connection whose operation committed, idle, for the next one; else close it."""
        if conn.closed or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            _close(conn)
            return
        with self._lock:
            waiting = self._idle.setdefault(url, [])
            if len(waiting) < self.keep:
                waiting.append((time.monotonic() + self.idle_seconds, conn))
                conn = None  # type: ignore[assignment]
                self._start_closer()
        if conn is not None:
            _close(conn)

    def close_all(self) -> None:
        with self._lock:
            conns = [conn for waiting in self._idle.values() for _, conn in waiting]
            self._idle.clear()
        for conn in conns:
            _close(conn)

    def count(self) -> int:
        with self._lock:
            return sum(len(waiting) for waiting in self._idle.values())

    def _start_closer(self) -> None:  # with the lock held
        if self._closer is None:
            self._closer = threading.Thread(target=self._close_expired, name="store-idle-connections", daemon=True)
            self._closer.start()
        else:
            self._wake.notify()

    def _close_expired(self) -> None:
        """Close each idle connection as it expires; end when none is left."""
        while True:
            with self._lock:
                now = time.monotonic()
                expired = [conn for waiting in self._idle.values() for until, conn in waiting if until <= now]
                for url, waiting in list(self._idle.items()):
                    self._idle[url] = [(until, conn) for until, conn in waiting if until > now]
                    if not self._idle[url]:
                        del self._idle[url]
                if not self._idle and not expired:
                    self._closer = None
                    return
                if not expired:
                    soonest = min(until for waiting in self._idle.values() for until, _ in waiting)
                    self._wake.wait(max(soonest - now, 0.05))
                    continue
            for conn in expired:
                _close(conn)

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's connections are not this process's to use or close.
        They are dropped unclosed; psycopg's libpq wrapper never ends a session from a process
        other than the one that opened it, so the parent's sessions live on."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._idle = {}
        self._closer = None


def _close(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.close()
    except (psycopg.Error, OSError):
        pass


IDLE = IdleConnections()
os.register_at_fork(after_in_child=IDLE.forget_after_fork)


# PostgreSQL's refusals for want of a free connection slot (SQLSTATE 53300, which libpq does not
# give a client whose connection failed: only its message says it). The server's messages are
# in English unless its lc_messages says otherwise; another language is met as any other failure.
NO_FREE_SLOT = ("too many clients already", "too many connections for role",
                "remaining connection slots are reserved")
FIRST_PAUSE, LONGEST_PAUSE = 0.05, 0.5  # seconds between asks: doubling, each with +-50 % jitter


def no_free_slot(exc: psycopg.OperationalError) -> bool:
    return any(words in str(exc) for words in NO_FREE_SLOT)


def connect_when_free(url: str, timeout: float, **kwargs: Any) -> psycopg.Connection[Any]:
    """`psycopg.connect`, asked again while PostgreSQL has no free slot, until `timeout` seconds
    have passed; any other failure, or the last refusal, is raised as it came."""
    deadline = time.monotonic() + timeout
    pause = FIRST_PAUSE
    while True:
        try:
            return psycopg.connect(url, connect_timeout=max(1, round(deadline - time.monotonic())), **kwargs)
        except psycopg.OperationalError as exc:
            left = deadline - time.monotonic()
            if not no_free_slot(exc) or left <= 0:
                raise
        time.sleep(min(pause * random.uniform(0.5, 1.5), left))  # the last ask is at the timeout
        pause = min(pause * 2, LONGEST_PAUSE)
