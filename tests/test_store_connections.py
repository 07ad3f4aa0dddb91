"""A process keeps its last incident-store connection a moment for the next operation
(incidents/store_connections.py), on the real PostgreSQL: it is reused while alive, never
after an error, never when the server or a proxy ended it, never for longer than IDLE_SECONDS,
never by a forked child; and checking it is bounded by the store's timeout."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from incidents.store import IncidentStore
from incidents.store_base import StoreUnreachable
from incidents.store_connections import CHECK_SECONDS, IDLE, IdleConnections, alive, connect_when_free
from tests.conftest import ADMIN_URL, in_lane
from tests.faultproxy import FaultProxy


@contextmanager
def _through_proxy(database_url: str, slow_seconds: float = 3.0) -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of the test database, and the connection string that goes through it."""
    params = conninfo_to_dict(database_url)
    proxy = FaultProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432),
                       slow_seconds=slow_seconds)
    try:
        yield proxy, make_conninfo(database_url, host="127.0.0.1", port=str(proxy.port))
    finally:
        proxy.close()


def _backend(store: IncidentStore) -> int:
    with store._connect() as conn:
        return conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]


@pytest.fixture
def fresh_idle():
    IDLE.close_all()
    yield IDLE
    IDLE.close_all()


def test_operations_a_moment_apart_share_one_connection_then_it_is_closed(store, fresh_idle):
    first = _backend(store)
    assert [_backend(store) for _ in range(5)] == [first] * 5
    assert fresh_idle.count() == 1
    time.sleep(IDLE.idle_seconds + 1)
    assert fresh_idle.count() == 0, "an idle connection outlived IDLE_SECONDS"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (first,)).fetchone()[0] == 0
    assert _backend(store) != first


def test_a_connection_whose_operation_failed_is_not_used_again(store, fresh_idle):
    first = _backend(store)
    with pytest.raises(RuntimeError), store._connect() as conn:
        conn.execute("CREATE TABLE half_done (x int)")  # never committed
        raise RuntimeError("the operation failed half-way")
    assert _backend(store) != first
    with store._connect() as conn:
        assert conn.execute("SELECT to_regclass('half_done') AS t").fetchone()["t"] is None


def test_a_connection_the_server_ended_is_replaced_without_an_error(store, fresh_idle):
    first = _backend(store)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    time.sleep(0.2)
    assert _backend(store) != first  # the operation ran, on a new connection


def test_a_connection_a_proxy_cut_is_replaced_and_a_store_that_went_down_is_reported(database_url, fresh_idle):
    with _through_proxy(database_url) as (proxy, proxied):
        store = IncidentStore(proxied)
        first = _backend(store)
        proxy.mode = "down"
        time.sleep(0.5)  # the proxy cuts kept-alive connections within 0.25 s
        with pytest.raises(StoreUnreachable):
            _backend(store)
        proxy.mode = "pass"
        assert _backend(store) != first


def test_checking_a_kept_connection_is_bounded_when_the_server_stops_answering(database_url, store):
    store.ensure_schema()  # the database exists
    with _through_proxy(database_url, slow_seconds=10) as (proxy, proxied):
        conn = psycopg.connect(proxied)
        assert alive(conn, timeout=2)
        proxy.mode = "slow"  # the proxy holds the connection, answering nothing, for 10 s
        started = time.monotonic()
        assert not alive(conn, timeout=1)
        assert time.monotonic() - started < 2
        conn.close()


def test_a_store_that_stops_answering_is_reported_within_the_check_and_the_connect_timeout(
        database_url, fresh_idle, monkeypatch):
    monkeypatch.setenv("RUNBOOKS_DATABASE_TIMEOUT", "2")
    with _through_proxy(database_url, slow_seconds=10) as (proxy, proxied):
        store = IncidentStore(proxied)
        _backend(store)  # a connection is kept
        proxy.mode = "slow"  # kept and new connections get no answer for 10 s
        started = time.monotonic()
        with pytest.raises(StoreUnreachable):
            _backend(store)
        assert time.monotonic() - started < 2 + CHECK_SECONDS + 1  # the check, then a connect timing out


def test_a_forked_child_starts_with_none_and_leaves_the_parents_connection_alive(store, fresh_idle):
    first = _backend(store)
    child = os.fork()
    if child == 0:  # the child: none of its parent's connections, and one of its own works
        code = 0 if IDLE.count() == 0 and _backend(store) != first else 1
        os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _backend(store) == first


def test_only_keep_connections_are_kept_per_database(database_url, store):
    store.ensure_schema()  # the database exists
    idle = IdleConnections(idle_seconds=30, keep=1)
    a, b = psycopg.connect(database_url), psycopg.connect(database_url)
    idle.give_back(database_url, a)
    idle.give_back(database_url, b)
    assert idle.count() == 1 and b.closed and not a.closed
    inside = psycopg.connect(database_url)
    inside.execute("SELECT 1")  # a transaction left open: never kept
    idle.give_back("other", inside)
    assert idle.count() == 1 and inside.closed
    assert idle.take(database_url, timeout=2) is a
    a.close()


@pytest.fixture
def one_slot_role(database_url, store) -> Iterator[str]:
    """A role of this lane allowed one connection at a time: the test database's connection
    string as that role."""
    store.ensure_schema()  # the database, made on first use
    role = in_lane("runbooks_one_slot")
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    try:
        yield make_conninfo(database_url, user=role)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'")
            admin.execute(f"DROP ROLE IF EXISTS {role}")


def test_a_connection_refused_for_want_of_a_slot_is_asked_for_again_until_one_comes_free(one_slot_role):
    """PostgreSQL refuses past max_connections or a role's limit; in an alert storm a slot comes
    free within moments, and the store waits for it (up to its connect timeout) instead of failing
    the runbook."""
    holder = psycopg.connect(one_slot_role)
    threading.Timer(0.8, holder.close).start()
    started = time.monotonic()
    with connect_when_free(one_slot_role, 5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert 0.7 <= time.monotonic() - started < 3


def test_a_slot_that_never_comes_free_is_reported_at_the_timeout_and_other_failures_at_once(one_slot_role):
    with psycopg.connect(one_slot_role):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            connect_when_free(one_slot_role, 1.5)
        assert 1.5 <= time.monotonic() - started < 3  # asked again until the timeout, not less
    refused = make_conninfo(one_slot_role, port="9")  # nothing listens: not a want of slots
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="refused"):
        connect_when_free(refused, 5)
    assert time.monotonic() - started < 0.5


def test_the_store_waits_for_a_slot_instead_of_failing_the_runbook(one_slot_role, fresh_idle, monkeypatch):
    monkeypatch.setenv("RUNBOOKS_DATABASE_TIMEOUT", "2")
    store = IncidentStore(one_slot_role)
    store._ready.add(store.url)  # the schema is the test database's, applied by the `store` fixture
    holder = psycopg.connect(one_slot_role)
    threading.Timer(0.5, holder.close).start()
    started = time.monotonic()
    assert isinstance(_backend(store), int)  # once the holder gave its slot back
    assert 0.4 <= time.monotonic() - started < 2
    IDLE.close_all()
    with psycopg.connect(one_slot_role):
        started = time.monotonic()
        with pytest.raises(StoreUnreachable, match="too many connections for role"):
            _backend(store)
        assert 2.0 <= time.monotonic() - started < 4  # the store's connect timeout (2 s)
