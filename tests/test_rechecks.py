"""The re-check before every action, against in-memory fakes (unit tier): each kind of target
read again, unchanged -> the action may run, changed -> it does not, with what changed. The
same checks against the sandbox's real API, PostgreSQL and Redis are in tests/test_prechecks.py."""

from __future__ import annotations

import pytest

from integrations.kubernetes_views import AutoscalerView
from tasks.prechecks import CHECKS, TargetChanged, recheck
from tests.action_samples import sample_action
from tests.fake_kubernetes import deployment
from tests.fakes import FakeCache, FakeWiring, ago, context, session

OLD, NEW = "acme/api:v1.4.1", "acme/api:v1.5.0"


@pytest.fixture
def wiring() -> FakeWiring:
    wiring = FakeWiring()
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, replicas=3)
    return wiring


def _check(wiring: FakeWiring, name: str, **changes) -> str | None:
    action = sample_action(name, **changes)
    return CHECKS[action.kind](context(wiring), action)


def test_a_rollback_runs_only_from_the_planned_revision(wiring):
    assert _check(wiring, "rollback by undo") is None  # at revision 3, as planned
    wiring.kube.deployments["sandbox", "api"] = deployment(2, OLD)
    assert _check(wiring, "rollback by undo") is None  # already rolled back: the remedy says so, nothing to stop
    wiring.kube.deployments["sandbox", "api"] = deployment(4, "acme/api:v1.6.0")
    assert "is at revision 4 (acme/api:v1.6.0), not 3 as planned" in _check(wiring, "rollback by undo")


def test_a_restart_is_refused_on_a_paused_or_moved_deployment(wiring):
    assert _check(wiring, "restart at a revision", revision=3) is None
    assert "at revision 3, not 2" in _check(wiring, "restart at a revision", revision=2)
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, paused=True)
    assert "paused" in _check(wiring, "restart at a revision", revision=3)


def test_a_scale_checks_the_count_and_who_owns_it(wiring):
    assert _check(wiring, "scale") is None  # 3 -> 6, at 3
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, replicas=4)
    assert "has 4 replicas, not 3 as planned" in _check(wiring, "scale")
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, replicas=6)
    assert _check(wiring, "scale") is None  # someone already scaled to the target: not in the way
    wiring.kube.autoscalers["sandbox", "api"] = AutoscalerView("api", 3, 8)
    assert "HPA api now scales deployment/api (3-8): a manual scale would be reverted" in _check(wiring, "scale")
    assert "minReplicas 3, not 2 as planned" in _check(wiring, "scale an hpa")
    wiring.kube.autoscalers["sandbox", "api"] = AutoscalerView("api", 2, 8)
    assert _check(wiring, "scale an hpa") is None
    del wiring.kube.autoscalers["sandbox", "api"]
    assert "HPA api no longer scales deployment/api" in _check(wiring, "scale an hpa")


def test_a_breaker_in_redis_still_holds_the_value_the_plan_saw(wiring):
    flags = wiring.caches["api-flags-url"] = FakeCache()
    redis_breaker = {"configmap": None, "redis_url_secret": "api-flags-url"}
    assert _check(wiring, "circuit breaker", **redis_breaker, previous=None) is None  # unset, as planned
    flags.values["circuit_breaker"] = "off"
    assert _check(wiring, "circuit breaker", **redis_breaker) is None
    flags.values["circuit_breaker"] = "degraded"
    assert "circuit_breaker is 'degraded', not 'off' as planned" in _check(wiring, "circuit breaker", **redis_breaker)


def test_sessions_are_the_same_backends_in_the_same_state(wiring):
    started = ago(120)
    planned = {"sessions": [[4242, started.isoformat()]],
               "expect": {"4242": {"state": "idle in transaction", "seconds": 61.3, "clock": "state"}}}
    wiring.postgres_.sessions_now = [session(4242, "idle in transaction", 70.0, started)]
    assert _check(wiring, "terminate a root blocker", **planned) is None
    wiring.postgres_.sessions_now = [session(4242, "idle", 5.0, started)]
    assert "pid 4242 is idle, not idle in transaction" in _check(wiring, "terminate a root blocker", **planned)
    wiring.postgres_.sessions_now = [session(4242, "idle in transaction", 3.0, started)]
    assert "left idle in transaction and came back" in _check(wiring, "terminate a root blocker", **planned)
    wiring.postgres_.sessions_now = [session(4242, "idle in transaction", 70.0, ago(30))]  # the pid was reused
    assert "pid 4242 has ended" in _check(wiring, "terminate a root blocker", **planned)


def test_a_cache_clear_needs_about_the_keys_planned(wiring):
    cache = wiring.caches["api-cache-url"] = FakeCache()
    assert "no key under api: is left" in _check(wiring, "clear a prefix", keys=3)
    cache.values.update({f"api:k{n}": "v" for n in range(3)})
    assert _check(wiring, "clear a prefix", keys=3) is None
    cache.values.update({f"api:more{n}": "v" for n in range(40)})
    assert "43 keys under api:, not about 3 as planned" in _check(wiring, "clear a prefix", keys=3)
    assert _check(wiring, "clear a prefix", mode="flushdb", keys=3) is None  # a flush is not by count


def test_recheck_stops_the_action_and_says_why(wiring):
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, replicas=4)
    with pytest.raises(TargetChanged, match="target changed since approval: .*4 replicas.*; scale not run"):
        recheck(context(wiring), sample_action("scale"))
    assert wiring.kube.calls.count("scale sandbox/api 6") == 0


def test_a_remedy_acts_only_with_its_grant_and_on_the_target_as_planned(wiring):
    from incidents.plans import Grant, NotApproved, Plan
    from tasks.deploys import RemediationFailed
    from tasks.error_rate import scale_deployment

    action = sample_action("scale")
    other = sample_action("scale", to=9)
    grant = Grant.issue(Plan(1, "api", "sandbox", (action,)), "sam", "load")
    with pytest.raises(NotApproved, match="does not contain this action"):
        scale_deployment.fn(context(wiring), other, grant)
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, replicas=4)
    with pytest.raises(RemediationFailed, match="has 4 replicas, not 3 as planned: not scaled"):
        scale_deployment.fn(context(wiring), action, grant)
    assert not [c for c in wiring.kube.calls if c.startswith("scale")]
    wiring.kube.deployments["sandbox", "api"] = deployment(3, NEW, replicas=3)
    result = scale_deployment.fn(context(wiring), action, grant)
    assert result.changed and result.detail == "replicas 3 -> 6" and wiring.kube.calls[-1] == "scale sandbox/api 6"
