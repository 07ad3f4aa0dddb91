"""Judgement through Prefect: a handful of catalog faults injected as a user would (the drill
injectors: sandbox controls, kubectl, SQL) and run as dry runs; an abstention that escalates
with its reason and changes nothing; a service-down handed over to the database diagnosis,
approved and verified. The whole catalog runs in benchmarks/judgement.py."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import pytest

from incidents.alerts import AlertParameter
from tests.conftest import FlowThread, api_image, ended

pytestmark = pytest.mark.usefixtures("prefect_server")


def _alert(spec, state) -> AlertParameter:
    began = state.began_at or datetime.now(timezone.utc)
    return AlertParameter.model_validate({
        "status": "firing", "startsAt": began.isoformat().replace("+00:00", "Z"),
        "labels": {"alertname": spec.alertname, "service": "api", "environment": "sandbox"},
        "annotations": {"summary": spec.description, **state.annotations}})


def _flow(scenario: str):
    from flows.database_issues import database_issues
    from flows.high_error_rate import high_error_rate
    from flows.security_incident import security_incident
    from flows.service_down import service_down

    return {f.name: f for f in (service_down, high_error_rate, database_issues, security_incident)}[scenario]


@pytest.fixture
def fault(world):
    """Inject a catalog fault by name; cleaned up afterwards, whatever happened."""
    from incidents.drills import CATALOG
    from tasks.context import RunContext
    from tasks.faults import cleanup, inject, signal, wait_for

    ctx, states = RunContext.load("sandbox", "api"), []

    def start(name: str):
        spec = CATALOG[name]
        state = inject(ctx, spec)
        states.append(state)
        assert wait_for(lambda: signal(ctx, state), 30, poll=0.3), f"{name} never became visible"
        return spec, state

    yield start
    for state in states:
        cleanup(ctx, state)


@pytest.mark.parametrize("name", ["release-then-dependency", "release-then-overload-and-dependency",
                                  "release-then-scaled-to-zero", "bad-release-errors", "two-bad-releases",
                                  "overload-then-bad-release", "release-then-dependency-at-once", "oom-kills",
                                  "bad-deploy-and-frontend-broken", "bad-config-rollout", "bad-secret-rollout",
                                  "release-breaks-dependency-calls", "dependency-down", "latency", "node-not-ready",
                                  "release-then-all-nodes-not-ready", "canary-errors"])
def test_catalog_faults_get_the_expected_plan_in_a_dry_run(world, fault, name):
    from incidents.drills import ABSTAIN, grade

    spec, state = fault(name)
    result = _flow(spec.scenario)(service="api", dry_run=True, alert=_alert(spec, state))
    judged = result["judgement"]
    assert grade(spec, set(judged["kinds"]), judged["abstained"]) == "right", judged
    assert judged["support"]
    if spec.outcome == ABSTAIN:  # an abstention names what it found
        assert {"oom-kills": "OOM-killed", "bad-config-rollout": "configmap/api-config changed",
                "bad-secret-rollout": "secret/api-credentials changed",
                "canary-errors": "the errors come from v1.6.1-errors, a canary serving",
                "latency": "slow, not down",
                "release-then-all-nodes-not-ready": "no node of the cluster takes new pods"}[name] in \
            judged["summary"], judged
    elif not spec.decoy_release:
        assert judged["confidence"] == "strong", judged
    if name == "oom-kills":  # the metrics API's last samples, through the official client
        assert "memory up to 250Mi of the 256Mi limit (98%)" in judged["summary"], judged
    if name == "node-not-ready":
        assert any("NotReady" in s for s in judged["support"]), judged
    assert not [m for m in world.slack_messages], "a dry run tells nobody"


def test_service_down_hands_over_to_the_database_diagnosis(world, fault):
    spec, state = fault("release-then-db-lock-down")
    result = _flow("service-down")(service="api", dry_run=True, alert=_alert(spec, state))
    assert result["planned_by"] == "database-issues"
    assert result["judgement"]["kinds"] == ["terminate_sessions"]
    assert "rollback" not in " ".join(result["plan"])


def test_an_abstention_escalates_with_its_reason_and_changes_nothing(world, store, fault):
    from flows.high_error_rate import high_error_rate

    spec, state = fault("release-then-feature-flag")
    image, replicas = api_image(world), world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"]
    result = ended(high_error_rate(service="api", alert=_alert(spec, state)))
    assert result["outcome"] == "abstained" and result["plan"] == [], result
    assert result["judgement"]["abstained"] and result["judgement"]["against"]
    assert api_image(world) == image and api_image(world).endswith(":v1.6.0")
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"] == replicas
    flags = world.cluster.get("configmaps", "sandbox", "api-flags")["data"]
    assert flags["circuit_breaker"] == "off"
    assert store.approvals(result["incident_id"]) == []
    escalated = [e for e in store.timeline(result["incident_id"]) if e.kind == "escalated"]
    assert escalated and "Abstaining" in escalated[0].message and "began after its rollout" in escalated[0].message
    posted = "\n".join(m["text"] for m in world.slack_messages)
    assert "Abstaining" in posted and "Nothing was changed" in posted


def test_a_handed_over_plan_is_approved_acted_on_and_verified_by_the_database_scenario(world, store, fault):
    from flows.service_down import service_down

    spec, state = fault("db-lock-down")
    run = FlowThread(service_down, service="api", severity="P1", alert=_alert(spec, state))
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    assert [a.kind for a in approval.plan.actions] == ["terminate_sessions"]
    assert approval.plan.scenario == "database-issues" and approval.plan.confidence == "strong"
    notice = next(m["text"] for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED"))
    assert "Confidence: strong" in notice and "for:" in notice
    assert run.resume(paused.id, approve=True, approver="dba-ana", reason="stale lock").status.value == "ACCEPT"
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    kinds = [e.kind for e in store.timeline(result["incident_id"])]
    assert "handed_over" in kinds and kinds.index("handed_over") < kinds.index("diagnosed")


def test_a_credential_written_with_echo_crash_loops_the_new_pods_and_clean_up_puts_it_back(world):
    """The bad-secret fault as kubectl does it: the Secret's value gains a trailing newline and a
    rollout restart starts pods with it, which exit; clean-up writes the value back exactly (it
    was kept in memory only, never in the fault's printed state) and the service serves again."""
    from incidents.drills import CATALOG
    from integrations.kubernetes import KubernetesClient
    from tasks.context import RunContext
    from tasks.faults import cleanup, healed, inject, signal, wait_for

    ctx, kube = RunContext.load("sandbox", "api"), KubernetesClient(str(world.runbooks_kubeconfig))

    def token() -> str:
        return str(kube.core.read_namespaced_secret("api-credentials", "sandbox").data["token"])

    before = token()
    state = inject(ctx, CATALOG["bad-secret-rollout"])
    try:
        assert wait_for(lambda: signal(ctx, state), 30, poll=0.3), "the service never went down"
        assert base64.b64decode(token()) == base64.b64decode(before) + b"\n"
        pods = kube.pods("sandbox", "api")
        assert pods and all(p.waiting_reason == "CrashLoopBackOff" for p in pods), pods
        assert before not in repr(state) and base64.b64decode(before).decode() not in repr(state)
    finally:
        done = cleanup(ctx, state)
    assert token() == before, done
    assert any("secret/api-credentials key token back as it was, pods restarted" in d for d in done), done
    assert wait_for(lambda: healed(ctx, state), 60), "the service did not serve again after clean-up"


def test_a_full_cache_gets_a_clear_in_a_dry_run_and_clean_up_removes_only_the_drill_keys(world, small_cache, fault):
    import redis

    from incidents.drills import CATALOG, grade
    from tasks.context import RunContext
    from tasks.faults import FaultNotAvailable, cleanup, inject

    spec, state = fault("cache-memory-pressure")
    cache = redis.Redis.from_url(small_cache, socket_timeout=2)
    cache.set("api:user:1", "kept")  # the service's own key, written after the drill's
    result = _flow(spec.scenario)(service="api", dry_run=True, alert=_alert(spec, state))
    judged = result["judgement"]
    assert grade(spec, set(judged["kinds"]), judged["abstained"]) == "right", judged
    assert judged["kinds"] == ["clear_cache"] and judged["confidence"] == "strong", judged
    done = cleanup(RunContext.load("sandbox", "api"), state)
    assert not list(cache.scan_iter(f"{state.undo['cache_keys']}*")), done
    assert cache.get("api:user:1") == b"kept" and any("drill keys" in d for d in done), done

    cache.config_set("maxmemory", "0")  # a cache without a limit: filling it would never evict
    with pytest.raises(FaultNotAvailable, match="no memory limit"):
        inject(RunContext.load("sandbox", "api"), CATALOG["cache-memory-pressure"])
