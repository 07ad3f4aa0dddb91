"""The database and latency steps against fakes held to the clients' protocols (unit tier):
what each reads from PostgreSQL and Prometheus, and the session signals that act only on the
backends the plan named. The same steps against the sandbox's real PostgreSQL run in
tests/test_database_issues.py and tests/test_prechecks.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from incidents.config import PrometheusSettings
from incidents.plans import Grant, NotApproved, Plan
from integrations.postgres import Connections, Replica, Replication
from tasks.context import RunContext
from tasks.database import cancel_queries, check_connections, check_replication, terminate_sessions
from tasks.latency import latency_query, prometheus_latency
from tests.action_samples import sample_action
from tests.fakes import FakePostgres, FakePrometheus, FakeWiring, ago, context, session

PLANNED = datetime.fromisoformat("2026-11-29T00:01:02.345678+00:00")  # the samples' backend start


def _granted(name: str):
    action = sample_action(name)
    return action, Grant.issue(Plan(1, "api", "sandbox", (action,)), "sam", "blocked orders")


def test_terminate_ends_only_the_planned_backend_and_only_with_its_grant():
    postgres = FakePostgres([session(4242, "idle in transaction", 61.3, PLANNED), session(4243, "active", 30, ago(40))])
    ctx = context(FakeWiring(postgres_=postgres))
    action, grant = _granted("terminate a root blocker")
    with pytest.raises(NotApproved):
        terminate_sessions.fn(ctx, sample_action("cancel queries"), grant)
    result = terminate_sessions.fn(ctx, action, grant)
    assert result.changed and result.detail == "pid 4242 terminated"
    assert postgres.signalled == [(4242, "terminate")]
    assert [s.pid for s in postgres.sessions()] == [4243]  # the waiter is left alone


def test_a_backend_that_restarted_under_the_same_pid_is_not_signalled():
    postgres = FakePostgres([session(4250, "active", 320, ago(5))])  # pid reused by a newer backend
    action, grant = _granted("cancel queries")
    result = cancel_queries.fn(context(FakeWiring(postgres_=postgres)), action, grant)
    assert not result.changed and result.detail == "pid 4250 gone (already ended)"
    assert postgres.signalled == []


def test_a_superusers_session_is_refused_unless_the_plan_allowed_it():
    superuser = session(4242, "idle in transaction", 61.3, PLANNED)
    postgres = FakePostgres([type(superuser)(**{**superuser.__dict__, "superuser": True})])
    action, grant = _granted("terminate a root blocker")
    result = terminate_sessions.fn(context(FakeWiring(postgres_=postgres)), action, grant)
    assert not result.changed and result.detail == "pid 4242 refused: superuser session"


def test_connections_near_a_roles_limit_name_its_idle_sessions():
    idle = session(10, "idle", 900, ago(1000))
    postgres = FakePostgres([idle], Connections(used=40, max_connections=100, reserved=3,
                                                by_role={"sandbox_app": (19, 20)}))
    finding = check_connections.fn(context(FakeWiring(postgres_=postgres)))
    assert finding.ok is False and "role sandbox_app 19/20" in finding.summary
    assert [s.pid for s in finding.data.idle_sessions] == [10]
    postgres.connections_now = Connections(used=40, max_connections=100, reserved=3, by_role={"sandbox_app": (5, 20)})
    assert check_connections.fn(context(FakeWiring(postgres_=postgres))).ok is True


def test_replication_lag_on_a_primary_and_on_a_replica():
    lagging = Replica("standby-1", "10.0.0.7", "streaming", "async", 95.0)
    postgres = FakePostgres(replication_now=Replication("primary", [lagging]))
    finding = check_replication.fn(context(FakeWiring(postgres_=postgres)))
    assert finding.ok is False and finding.summary == "primary with 1 replicas, 1 lagging"
    postgres.replication_now = Replication("replica", replay_lag_seconds=2.0)
    assert check_replication.fn(context(FakeWiring(postgres_=postgres))).ok is True
    postgres.replication_now = Replication("replica", replay_lag_seconds=None)  # never replayed anything
    assert check_replication.fn(context(FakeWiring(postgres_=postgres))).ok is False


def _watched(wiring: FakeWiring) -> RunContext:
    """The api service with Prometheus settings and a 1000 ms objective, whichever config the
    session loaded (the service tier's test config has neither)."""
    ctx = context(wiring)
    service = ctx.service.model_copy(update={"latency_slo_ms": 1000.0})
    config = ctx.config.model_copy(update={"prometheus": PrometheusSettings(url="http://prometheus.test"),
                                           "services": {**ctx.config.services, ctx.service_name: service}})
    return replace(ctx, config=config)


def test_latency_is_judged_against_the_services_objective():
    p50, p99 = latency_query(_watched(FakeWiring()), 0.5), latency_query(_watched(FakeWiring()), 0.99)
    prometheus = FakePrometheus({p50: [({}, 0.120)], p99: [({}, 1.5)]})
    finding = prometheus_latency.fn(_watched(FakeWiring(prometheus_=prometheus)))
    assert finding.ok is False and finding.summary == "p50 120 ms, p99 1500 ms against the 1000 ms objective"
    assert prometheus.asked == [p50, p99] and "api" in p99
    prometheus.answers[p99] = [({}, float("nan"))]  # no requests in the window: unknown, not fine
    assert prometheus_latency.fn(_watched(FakeWiring(prometheus_=prometheus))).ok is None
    down = prometheus_latency.fn(_watched(FakeWiring()))  # Prometheus not reachable
    assert down.ok is None and "not part of this test" in down.summary
