"""Re-check before every action: each remedy kind's target, read again against what the
approved plan saw; a changed target is reported and the action does not run."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from incidents.plans import PlannedAction
from integrations import http
from tests.conftest import APP_ROLE, FlowThread, kubectl

pytestmark = pytest.mark.usefixtures("prefect_server")


def _action(kind: str, **params) -> PlannedAction:
    return PlannedAction(kind, "target", "before", "after", "via", params)


@pytest.fixture
def ctx(world):
    from tasks.context import RunContext

    return RunContext.load("sandbox", "api")


def _check(ctx, action) -> str | None:
    from tasks.prechecks import CHECKS

    return CHECKS[action.kind](ctx, action)


def test_deployment_targets_are_read_again(world, ctx):
    base = {"namespace": "sandbox", "deployment": "api"}
    good, undo = "registry.sandbox.local/acme/api:v1.4.1", {**base, "strategy": "kubernetes_undo"}
    assert _check(ctx, _action("rollback", **undo, from_revision=2, to_revision=1, to_image=good)) is None
    assert "revision 2" in _check(ctx, _action("rollback", **undo, from_revision=3, to_revision=2, to_image=good))
    assert _check(ctx, _action("scale", **base, **{"from": 3, "to": 6})) is None
    kubectl(world, "scale", "deployment/api", "--replicas=4")
    assert "4 replicas" in _check(ctx, _action("scale", **base, **{"from": 3, "to": 6}))
    assert _check(ctx, _action("rollout_restart", **base, revision=2)) is None
    kubectl(world, "rollout", "pause", "deployment/api")
    assert "paused" in _check(ctx, _action("rollout_restart", **base, revision=2))


def test_switches_and_secrets_are_read_again(world, ctx):
    breaker = {"namespace": "sandbox", "configmap": "api-flags", "key": "circuit_breaker", "value": "on",
               "redis_url_secret": None}
    assert _check(ctx, _action("circuit_breaker", **breaker, previous="off")) is None
    kubectl(world, "patch", "configmap", "api-flags", "-p", '{"data": {"circuit_breaker": "degraded"}}')
    assert "'degraded'" in _check(ctx, _action("circuit_breaker", **breaker, previous="off"))
    logging = {"namespace": "sandbox", "configmap": "api-config", "key": "log_level", "level": "debug"}
    assert _check(ctx, _action("enable_logging", **logging, previous="info")) is None
    kubectl(world, "patch", "configmap", "api-config", "-p", '{"data": {"log_level": "warn"}}')
    assert "'warn'" in _check(ctx, _action("enable_logging", **logging, previous="info"))
    version = world.cluster.get("secrets", "sandbox", "api-credentials")["metadata"]["resourceVersion"]
    secret = {"namespace": "sandbox", "secret": "api-credentials", "keys": ["token"], "consumers": ["api"],
              "resource_version": version}
    assert _check(ctx, _action("rotate_secrets", **secret)) is None
    kubectl(world, "patch", "secret", "api-credentials", "-p", '{"data": {"token": "b3RoZXI="}}')
    assert "resourceVersion" in _check(ctx, _action("rotate_secrets", **secret))


def test_sessions_are_the_same_backends_in_the_same_state(ctx, app_database_url):
    url = make_conninfo(app_database_url, user=APP_ROLE)
    with psycopg.connect(url) as idle, psycopg.connect(url, autocommit=True) as other:
        idle.execute("SELECT 1")  # idle in transaction from here on
        time.sleep(1.2)
        [planned] = [s for s in ctx.postgres().sessions() if s.pid == idle.info.backend_pid]
        action = _action("terminate_sessions", sessions=[[planned.pid, planned.backend_start.isoformat()]],
                         expect={str(planned.pid): {"state": planned.state, "seconds": planned.seconds_in_state,
                                                    "clock": "state"}})
        assert _check(ctx, action) is None
        idle.commit()  # the application finished its transaction: the session is healthy now
        assert "not idle in transaction" in _check(ctx, action)
        idle.execute("SELECT 1")  # ... and a new transaction is not the stale one that was planned
        assert "came back" in _check(ctx, action)
        gone = _action("terminate_sessions", sessions=[[other.info.backend_pid, planned.backend_start.isoformat()]])
        assert "has ended" in _check(ctx, gone)


def test_a_cache_with_no_key_left_is_not_cleared(ctx):
    from integrations.cache import CacheClient
    from tasks.context import resolve_secret

    action = _action("clear_cache", mode="prefix", prefix="api:", keys=3)
    with CacheClient(resolve_secret(ctx.service.cache.url_secret)) as cache:
        cache.delete_prefix("api:")
        assert "no key" in _check(ctx, action)
        for n in range(3):
            cache.set(f"api:k{n}", "v")
        assert _check(ctx, action) is None
        cache.delete_prefix("api:")


def test_a_target_changed_after_approval_is_not_acted_on_and_escalates(world, store):

    from flows.high_error_rate import high_error_rate

    http.post(f"{world.url}/_sandbox/load", json={"service": "api", "rps": 200})
    run = FlowThread(high_error_rate, service="api")
    paused = run.wait_paused()
    kubectl(world, "scale", "deployment/api", "--replicas=4")  # someone acts by hand meanwhile
    assert run.resume(paused.id, approve=True, approver="kim", reason="peak").status.value == "ACCEPT"
    result = run.join(60)
    assert result["outcome"] == "remediation_failed" and "target changed since approval" in result["error"]
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"] == 4, "not scaled on top"
    events = store.timeline(result["incident_id"])
    assert any(e.kind == "escalated" and "target changed since approval" in e.message for e in events)


def test_an_attempt_after_a_refused_one_is_refused_too_and_deletes_nothing(ctx, store):
    """Attempt 1 finds 500 keys where 10 were planned and is refused; attempt 2 (a retry, a
    re-run) re-checks as well and is refused: the grant for that action has ended."""
    from incidents.models import Severity
    from incidents.plans import Grant, Plan
    from integrations.cache import CacheClient
    from tasks.context import resolve_secret
    from tasks.prechecks import TargetChanged
    from tasks.remedies import execute

    incident = store.open_incident(dedup_key=f"recheck:{time.time()}", scenario="database-issues", service="api",
                                   environment="sandbox", severity=Severity.P1, title="t", detected_by="test",
                                   flow_run_id=None, alert=None)
    plan = Plan(incident.id, "api", "sandbox", (_action("clear_cache", mode="prefix", prefix="api:", keys=10),))
    grant = Grant.issue(plan, "kim", "test")
    with CacheClient(resolve_secret(ctx.service.cache.url_secret)) as cache:
        cache.delete_prefix("api:")
        for n in range(500):
            cache.set(f"api:k{n}", "v")
        for attempt in (1, 2):
            with pytest.raises(TargetChanged, match="500 keys|ended"):
                execute(ctx, plan, grant)
            assert cache.count_prefix("api:") == 500, f"attempt {attempt} deleted keys"
        [entry] = store.action_log(incident.id)
        assert entry.status == "refused" and entry.attempts == 2 and entry.acting_at is None
        cache.delete_prefix("api:")


def test_an_attempt_whose_re_check_could_not_read_the_target_re_checks_next_time(ctx, store):
    """A re-check that failed on an outage never acted: the next attempt re-checks, and a target
    that changed meanwhile is refused then."""
    from incidents.models import Severity
    from incidents.plans import Grant, Plan
    from integrations.cache import CacheClient
    from tasks.context import resolve_secret
    from tasks.prechecks import TargetChanged
    from tasks.remedies import execute

    incident = store.open_incident(dedup_key=f"recheck2:{time.time()}", scenario="database-issues", service="api",
                                   environment="sandbox", severity=Severity.P1, title="t", detected_by="test",
                                   flow_run_id=None, alert=None)
    plan = Plan(incident.id, "api", "sandbox", (_action("clear_cache", mode="prefix", prefix="api:", keys=10),))
    grant = Grant.issue(plan, "kim", "test")
    store.begin_action(plan.digest, plan.actions[0].digest, incident.id, "clear_cache")  # attempt 1: cut off
    store.finish_action(incident.id, plan.digest, plan.actions[0].digest, "failed", "Redis: connection refused")
    with CacheClient(resolve_secret(ctx.service.cache.url_secret)) as cache:
        cache.delete_prefix("api:")
        for n in range(500):
            cache.set(f"api:k{n}", "v")
        with pytest.raises(TargetChanged):
            execute(ctx, plan, grant)
        assert cache.count_prefix("api:") == 500
        cache.delete_prefix("api:")
