"""Safe in a real cluster: a rollback names its target, so an answer lost in transit never
rolls back twice, and a second dispatch never flips back to the broken revision."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import GITHUB_TOKEN, FlowThread, api_image, break_api, kubectl

pytestmark = pytest.mark.usefixtures("prefect_server")
GOOD = "registry.sandbox.local/acme/api:v1.5.0"


def _rollback_runs(world) -> list[dict]:
    return [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]


def test_a_lost_dispatch_answer_causes_no_second_rollback(world):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", severity="P1")
    paused = run.wait_paused()
    # GitHub accepts the dispatch; its answer never arrives (the connection drops)
    httpx.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
                                                     "path": "/dispatches", "count": 1}).raise_for_status()
    assert run.resume(paused.id, approve=True, approver="alice", reason="v2 broke it").status.value == "ACCEPT"
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    assert world.faults._faults["github"].count == 0, "the dispatch's answer was lost"
    assert len(_rollback_runs(world)) == 1, "the lost answer was resolved by finding the run, not by a second POST"
    assert api_image(world) == GOOD


def test_a_second_dispatch_of_the_same_rollback_changes_nothing(world):
    from integrations.github import GitHubClient

    break_api(world)
    inputs = {"environment": "sandbox", "to_revision": "2", "to_image": GOOD}
    with GitHubClient(f"{world.url}/github", GITHUB_TOKEN) as github:
        for _ in range(2):  # e.g. two operators, or a retry after a lost answer
            since = github.dispatch_workflow("acme/api", "rollback.yml", "main", inputs)
            done = github.wait_for_dispatched_run("acme/api", "rollback.yml", since, timeout=30, poll=0.2)
            assert done["conclusion"] == "success"
            deadline = time.monotonic() + 10
            while api_image(world) != GOOD and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api_image(world) == GOOD, "never back to the broken revision"
            time.sleep(1.1)  # the next dispatch is found by its own start second
    assert len(_rollback_runs(world)) == 2


# -- containment that holds ---------------------------------------------------------------------------
ALERT = {"labels": {"alertname": "SuspiciousLogins", "service": "api"},
         "annotations": {"suspicious_ips": "203.0.113.7, 198.51.100.0/24", "summary": "credential stuffing"},
         "startsAt": "2026-11-28T03:00:00Z"}
ONLY_FROM_INGRESS = {"metadata": {"name": "api-only-from-ingress-nginx"}, "spec": {
    "podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]}]}}


def test_pods_another_policy_restricts_are_never_opened_up_by_a_block(world, store):
    from flows.security_incident import security_incident

    world.cluster.create("networkpolicies", "sandbox", ONLY_FROM_INGRESS)
    run = FlowThread(security_incident, service="api", alert=ALERT)
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    assert [a["kind"] for a in approval.plan["actions"]] == ["rotate_secrets", "enable_logging"]
    against = " ".join(approval.plan["against"])
    assert "block by NetworkPolicy refused" in against and "api-only-from-ingress-nginx" in against
    assert "ingress_denylist" in against, "the alternative is proposed"
    run.resume(paused.id, approve=True, approver="ivan", reason="contain")
    assert run.join(120)["outcome"] == "resolved"
    assert [p["metadata"]["name"] for p in world.cluster.list("networkpolicies", "sandbox")] == \
        ["api-only-from-ingress-nginx"], "no policy that admits the internet was added next to it"


def test_a_policy_that_appears_after_approval_stops_the_block(world, store):
    from flows.security_incident import security_incident

    run = FlowThread(security_incident, service="api", alert=ALERT)
    paused = run.wait_paused()
    world.cluster.create("networkpolicies", "sandbox", ONLY_FROM_INGRESS)
    run.resume(paused.id, approve=True, approver="ivan", reason="contain")
    result = run.join(120)
    assert result["outcome"] == "remediation_failed" and "target changed since approval" in result["error"]
    assert "block-suspicious-ips" not in {
        p["metadata"]["name"] for p in world.cluster.list("networkpolicies", "sandbox")
    }


def test_the_block_policy_keeps_in_cluster_traffic_and_is_verified(world):
    from flows.security_incident import security_incident

    run = FlowThread(security_incident, service="api", alert=ALERT)
    run.resume(run.wait_paused().id, approve=True, approver="ivan", reason="contain")
    result = run.join(120)
    assert result["outcome"] == "resolved" and result["verification"]["recovered"]
    peers = world.cluster.get("networkpolicies", "sandbox", "block-suspicious-ips")["spec"]["ingress"][0]["from"]
    assert {"podSelector": {}} in peers and {"namespaceSelector": {}} in peers


def test_ingress_denylist_blocks_at_the_ingress_and_verification_sees_it(world, store):
    from flows.security_incident import security_incident
    from integrations.kubernetes_security import DENYLIST

    run = FlowThread(security_incident, service="api", environment="sandbox-ingress", alert=ALERT)
    paused = run.wait_paused()
    [block] = [a for a in store.approval_for_run(str(paused.id)).plan["actions"] if a["kind"] == "block_ips"]
    assert block["target"].startswith("ingress/api") and block["before"] == "deny list: empty"
    assert block["after"] == "deny list: 198.51.100.0/24, 203.0.113.7/32"
    run.resume(paused.id, approve=True, approver="ivan", reason="contain")
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    annotations = world.cluster.get("ingresses", "sandbox", "api")["metadata"]["annotations"]
    assert annotations[DENYLIST] == "198.51.100.0/24,203.0.113.7/32"
    assert not world.cluster.list("networkpolicies", "sandbox"), "no NetworkPolicy with this strategy"


def test_drill_clean_up_keeps_an_incidents_block(world):
    from incidents.drills import CATALOG
    from integrations.kubernetes_security import block_cidrs, blocked_by_policy
    from tasks.context import RunContext
    from tasks.faults import LEAK_SOURCE, cleanup, inject

    ctx = RunContext.load("sandbox", "api")
    state = inject(ctx, CATALOG["leaked-credential"])
    with ctx.kubernetes() as kube:  # a real incident's block, and the drill's own
        block_cidrs(kube, "sandbox", "block-suspicious-ips", "api", ["198.51.100.7/32", f"{LEAK_SOURCE}/32"])
    done = cleanup(ctx, state)
    with ctx.kubernetes() as kube:
        assert blocked_by_policy(kube, "sandbox", "block-suspicious-ips") == ["198.51.100.7/32"]
    assert any("198.51.100.7/32 stay blocked" in line for line in done)


def test_rotation_says_the_credential_must_be_revoked_at_its_issuer(world, store):
    from flows.security_incident import security_incident
    from incidents.followups import FollowUpStore

    run = FlowThread(security_incident, service="api", alert=ALERT)
    paused = run.wait_paused()
    [rotate] = [a for a in store.approval_for_run(str(paused.id)).plan["actions"] if a["kind"] == "rotate_secrets"]
    assert "valid at their issuer until revoked there" in rotate["after"]
    run.resume(paused.id, approve=True, approver="ivan", reason="contain")
    result = run.join(120)
    assert result["outcome"] == "resolved"
    items = FollowUpStore().action_items(result["incident_id"])
    assert [i.title for i in items] == ["Revoke the leaked credentials of secret/api-credentials (namespace "
                                           "sandbox) at their issuer"] and items[0].horizon == "24h"
    resolution = next(m["text"] for m in world.slack_messages if m["text"].startswith("✅ INCIDENT RESOLVED"))
    assert "revoke them at their issuer" in resolution


# -- Kubernetes semantics --------------------------------------------------------------------------
HPA = {"metadata": {"name": "api"}, "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                                                "name": "api"},
                                             "minReplicas": 3, "maxReplicas": 5}}


def test_a_deployment_an_hpa_scales_gets_its_hpa_bounds_raised_not_a_manual_scale(world):
    from flows.high_error_rate import high_error_rate

    world.cluster.create("horizontalpodautoscalers", "sandbox", HPA)
    httpx.post(f"{world.url}/_sandbox/load", json={"service": "api", "rps": 200})
    run = FlowThread(high_error_rate, service="api")
    paused = run.wait_paused()
    run.resume(paused.id, approve=True, approver="kim", reason="peak")
    result = run.join(60)
    [planned] = result["plan"]
    assert planned.startswith("scale horizontalpodautoscaler/api (namespace sandbox): minReplicas 3, maxReplicas 5 "
                              "(3 running) -> minReplicas "), planned
    hpa = world.cluster.get("horizontalpodautoscalers", "sandbox", "api")["spec"]
    assert hpa["minReplicas"] >= 5 and hpa["maxReplicas"] >= hpa["minReplicas"]
    assert result["outcome"] == "resolved", result
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"] == hpa["minReplicas"], \
        "the HPA, not a manual scale, moved the deployment"


def test_a_manual_scale_is_reverted_by_the_hpa_so_it_is_never_planned_against_one(world):
    world.cluster.create("horizontalpodautoscalers", "sandbox", HPA)
    kubectl(world, "scale", "deployment/api", "--replicas=8")
    deadline = time.monotonic() + 5
    while world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"] != 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"] == 5


def test_a_paused_deployment_is_reported_not_restarted(world, store):
    from incidents.plans import PlannedAction
    from tasks.context import RunContext
    from tasks.prechecks import TargetChanged, recheck

    kubectl(world, "rollout", "pause", "deployment/api")
    action = PlannedAction("rollout_restart", "deployment/api", "3 pods", "replaced", "kubectl rollout restart",
                           {"namespace": "sandbox", "deployment": "api", "revision": 2})
    with pytest.raises(TargetChanged, match="paused"):
        recheck(RunContext.load("sandbox", "api"), action)
    assert "kubectl.kubernetes.io/restartedAt" not in (
        world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["metadata"].get("annotations") or {})


def test_an_issue_and_a_comment_whose_answers_are_lost_are_made_once(world):
    from integrations.github import GitHubClient

    with GitHubClient(f"{world.url}/github", GITHUB_TOKEN) as github:
        httpx.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
                                                         "path": "/acme/incidents/issues", "count": 1})
        issue = github.create_issue("acme/incidents", "[P1] api: lost answer", "body of the lost answer", ["incident"])
        assert [i["number"] for i in world.github.repo("acme/incidents").issues] == [issue["number"]]
        httpx.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
                                                         "path": "/comments", "count": 1})
        github.comment("acme/incidents", issue["number"], "a status update")
        assert [c["body"] for c in world.github.repo("acme/incidents").comments[issue["number"]]] == ["a status update"]
