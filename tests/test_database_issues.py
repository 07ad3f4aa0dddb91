"""database-issues end to end against real faults on the local PostgreSQL and real Redis."""

from __future__ import annotations

import json
import re
import threading
import time
from typing import cast

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from tests.conftest import APP_ROLE, CACHE_URL, FlowThread

pytestmark = pytest.mark.usefixtures("prefect_server")


class LockFault:
    """A session idle in a transaction holding an ACCESS EXCLUSIVE lock on `orders`, and
    `waiters` sessions blocked behind it, all as the non-superuser role APP_ROLE (sandbox_app)."""

    def __init__(self, app_url: str, waiters: int = 3):
        self.url = make_conninfo(app_url, user=APP_ROLE)
        self.holder = psycopg.connect(self.url)
        self.holder.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # opens a transaction, then idles
        self.holder_pid = self.holder.info.backend_pid
        self.bystander = psycopg.connect(self.url, autocommit=True)  # idle, blocks nobody: must survive
        self.results: list[str] = []
        self.threads = [threading.Thread(target=self._wait, daemon=True) for _ in range(waiters)]
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 10
        while self.blocked() < waiters and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.blocked() == waiters

    def _wait(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            try:
                conn.execute("SELECT count(*) FROM orders").fetchone()
                self.results.append("finished")
            except psycopg.Error as exc:
                self.results.append(f"error: {exc}")

    def blocked(self) -> int:
        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE cardinality(pg_blocking_pids(pid)) > 0 "
                                "AND datname = current_database()").fetchone()[0]

    def holder_alive(self) -> bool:
        try:
            self.holder.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        for conn in (self.holder, self.bystander):
            try:
                conn.close()
            except psycopg.Error:
                pass
        for thread in self.threads:
            thread.join(10)


@pytest.fixture
def lock_fault(world, app_database_url):
    fault = LockFault(app_database_url)
    yield fault
    fault.close()


def _plan_text(run_id) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        keyset = client.read_flow_run(run_id).state.state_details.run_input_keyset
        return json.loads(client.read_flow_run_input(run_id, keyset["description"]))


def test_approved_plan_terminates_only_the_root_blocker(lock_fault, world, store):
    from flows.database_issues import database_issues

    run = FlowThread(database_issues, service="api")
    paused = run.wait_paused()
    plan = _plan_text(paused.id)
    assert f"backend {lock_fault.holder_pid} ({APP_ROLE})" in plan and "pg\\_terminate\\_backend" in plan
    # 3 waiters, plus the service's own health check when it happens to be waiting too
    assert re.search(r"blocking [34] sessions", plan), plan
    assert lock_fault.holder_alive() and lock_fault.blocked() == 3, "nothing may change before the approval"
    run.resume(paused.id, approve=True, approver="erin", reason="release the lock")
    result = run.join()

    assert result["outcome"] == "resolved", result
    assert not lock_fault.holder_alive()
    lock_fault.close()
    assert lock_fault.results == ["finished"] * 3, "the waiters must proceed"
    report = world.github.repo("acme/incidents").comments[1][0]["body"]
    assert f"root blocker pid {lock_fault.holder_pid}" in report
    assert any(row.startswith("| pod logs |") for row in report.splitlines()), report  # the checklist's logs
    actions = [e.message for e in store.timeline(result["incident_id"]) if e.kind == "action"]
    assert len(actions) == 1 and f"pid {lock_fault.holder_pid} terminated" in actions[0]


def test_bystanders_survive_a_termination(lock_fault, world):
    from flows.database_issues import database_issues

    run = FlowThread(database_issues, service="api")
    paused = run.wait_paused()
    run.resume(paused.id, approve=True, approver="erin", reason="release the lock")
    assert run.join()["outcome"] == "resolved"
    assert lock_fault.bystander.execute("SELECT 1").fetchone() == (1,)


def test_declined_plan_terminates_nothing(lock_fault, world, store):
    from flows.database_issues import database_issues

    run = FlowThread(database_issues, service="api")
    paused = run.wait_paused()
    run.resume(paused.id, approve=False, approver="frank", reason="the migration must finish")
    result = run.join()
    assert result["outcome"] == "declined"
    assert lock_fault.holder_alive() and lock_fault.blocked() == 3
    assert not [e for e in store.timeline(result["incident_id"]) if e.kind == "action"]


def test_dry_run_names_a_long_query_and_cancels_nothing(world, app_database_url):
    from flows.database_issues import database_issues

    conn = psycopg.connect(make_conninfo(app_database_url, user=APP_ROLE), autocommit=True)
    pid = conn.info.backend_pid
    sleeper = threading.Thread(target=lambda: _swallow(conn, "SELECT pg_sleep(30)"), daemon=True)
    sleeper.start()
    try:
        time.sleep(2.5)  # past long_query_seconds (2 s in the test config)
        result = FlowThread(database_issues, service="api", dry_run=True).join(60)
        assert result["outcome"] == "dry_run"
        assert any(a.startswith("cancel_queries") and f"pid {pid}" in a for a in result["plan"]), result["plan"]
        with psycopg.connect(app_database_url, autocommit=True) as admin:
            state = admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        assert state == ("active",), "a dry run cancels nothing"
    finally:
        with psycopg.connect(app_database_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        sleeper.join(10)


def _swallow(conn: psycopg.Connection, sql: str) -> None:
    try:
        conn.execute(sql)
    except psycopg.Error:
        pass


def test_connection_pressure_ends_idle_sessions(world, app_database_url):
    from flows.database_issues import database_issues

    with psycopg.connect(app_database_url, autocommit=True) as admin:
        admin.execute(f"ALTER ROLE {APP_ROLE} CONNECTION LIMIT 6")
    idle = [psycopg.connect(make_conninfo(app_database_url, user=APP_ROLE), autocommit=True) for _ in range(5)]
    try:
        time.sleep(1.5)  # idle longer than idle_seconds (1 s in the test config)
        run = FlowThread(database_issues, service="api")
        paused = run.wait_paused()
        plan = _plan_text(paused.id)
        # 5 idle sessions, plus the service's own health check when it is connected at that moment
        escaped = APP_ROLE.replace("_", "\\_")  # Markdown
        assert re.search(re.escape(f"role {escaped}: ") + "[56]/6 connections", plan), plan
        run.resume(paused.id, approve=True, approver="grace", reason="pool leak")
        result = run.join()
        assert result["outcome"] == "resolved", result
        alive = 0
        for conn in idle:
            try:
                conn.execute("SELECT 1")
                alive += 1
            except psycopg.OperationalError:
                pass
        assert alive == 0
    finally:
        with psycopg.connect(app_database_url, autocommit=True) as admin:
            admin.execute(f"ALTER ROLE {APP_ROLE} CONNECTION LIMIT -1")
        for conn in idle:
            conn.close()


def test_cache_is_cleared_by_prefix_only(world, test_config):
    from prefect.logging import disable_run_logger

    from incidents.plans import Grant, Plan, PlannedAction
    from tasks.context import RunContext
    from tasks.database import clear_cache

    r = redis.Redis.from_url(CACHE_URL)
    r.flushdb()
    r.mset({f"api:user:{n}": "x" for n in range(1200)})
    r.mset({"session:1": "keep", "apiary:1": "keep", "other:api:1": "keep"})
    action = PlannedAction("clear_cache", "redis cache of api", "1200 keys", "keys api:* removed",
                           "SCAN + UNLINK of keys api:*", {"mode": "prefix", "prefix": "api:"})
    grant = Grant.issue(Plan(1, "api", "sandbox", (action,)), "heidi", "stale cache")
    with disable_run_logger():
        result = clear_cache.fn(RunContext.load("sandbox", "api"), action, grant)
    assert result.detail == "1200 keys api:* removed"
    assert r.dbsize() == 3 and r.get("apiary:1") == b"keep" and r.get("other:api:1") == b"keep"
    r.flushdb()


def test_superuser_blockers_are_not_planned_for_termination():
    from incidents.check_facts import SESSIONS
    from incidents.config import load_environment
    from incidents.database_rules import plan_database_issues
    from incidents.findings import Finding

    service = load_environment("sandbox").services["api"]
    root = {"pid": 42, "role": "postgres", "superuser": True, "state": "idle in transaction",
            "backend_start": "2026-11-26T00:00:00+00:00", "seconds": 50.0, "query": "LOCK", "waiters": [43]}
    plan = plan_database_issues(1, "sandbox", "api", service, {SESSIONS: Finding(SESSIONS, False, "x", data={
        "root_blockers": [root], "idle_in_transaction": [root], "long_queries": []})})
    assert plan.actions == ()
    assert any("pid 42 is a superuser session: not terminated" in e for e in plan.evidence)


def test_an_unreachable_database_gets_a_restart_of_its_deployment():
    from incidents.check_facts import REACH
    from incidents.config import load_environment
    from incidents.database_rules import plan_database_issues
    from incidents.findings import Finding

    service = load_environment("sandbox").services["api"]
    plan = plan_database_issues(1, "sandbox", "api", service,
                                {REACH: Finding(REACH, False, "not answering: connection refused")})
    assert [a.describe() for a in plan.actions] == [
        "rollout_restart deployment/database (namespace sandbox): database not answering -> "
        "database pods replaced (via kubectl rollout restart)"]
    assert plan.actions[0].params.as_dict() == {"namespace": "sandbox", "deployment": "database"}


def test_a_cache_that_evicted_once_is_not_under_pressure_now(world, tmp_path, monkeypatch):
    """Redis counts evictions since it started. A cache that evicted earlier and has room now is
    not under pressure (clearing it would only cost its hit rate); one evicting now is."""
    import subprocess

    from prefect.logging import disable_run_logger

    from tasks.context import RunContext
    from tasks.database import check_cache
    from tests.conftest import free_port

    port = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru",
                               "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = redis.Redis(port=port, socket_timeout=2)
    try:
        for _ in range(100):
            try:
                cache.ping()
                break
            except redis.RedisError:
                time.sleep(0.1)

        def fill(keys: int) -> None:
            pipe = cache.pipeline(transaction=False)
            for n in range(keys):
                pipe.set(f"api:blob:{n}:{time.monotonic_ns()}", "x" * 10_000)
            pipe.execute()

        fill(400)  # ~4 MB into 2 MB: it evicted
        assert int(cast(dict, cache.info("stats"))["evicted_keys"]) > 0
        cache.config_set("maxmemory", "64mb")  # room again
        monkeypatch.setenv("RUNBOOKS_SECRET_API_CACHE_URL", f"redis://127.0.0.1:{port}/0")
        with disable_run_logger():
            calm = check_cache.fn(RunContext.load("sandbox", "api"))
        assert calm.ok is True and " 0 evictions in the last 0.5 s" in calm.summary, calm.summary
        cache.config_set("maxmemory", "2mb")
        stop = threading.Event()
        def keep_filling() -> None:
            while not stop.is_set():
                fill(50)

        writer = threading.Thread(target=keep_filling, daemon=True)
        writer.start()
        try:
            with disable_run_logger():
                pressed = check_cache.fn(RunContext.load("sandbox", "api"))
        finally:
            stop.set()
            writer.join(10)
        assert pressed.ok is False and " 0 evictions in the last" not in pressed.summary, pressed.summary
    finally:
        server.terminate()
        server.wait(10)
