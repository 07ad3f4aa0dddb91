"""Safe in a real cluster: a rollback names its target, so an answer lost in transit never
rolls back twice, and a second dispatch never flips back to the broken revision."""

from __future__ import annotations

import time

import pytest

from integrations import http
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
    http.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
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
        for n in range(2):  # e.g. two operators, or a retry after a lost answer
            run_id = github.dispatch_workflow("acme/api", "rollback.yml", "main", inputs, f"op-{n}")
            done = github.wait_for_run("acme/api", "rollback.yml", run_id, timeout=30, poll=0.2)
            assert done.conclusion == "success"
            deadline = time.monotonic() + 10
            while api_image(world) != GOOD and time.monotonic() < deadline:
                time.sleep(0.1)
            assert api_image(world) == GOOD, "never back to the broken revision"
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
    assert [a.kind for a in approval.plan.actions] == ["rotate_secrets", "enable_logging"]
    against = " ".join(approval.plan.against)
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
    [block] = [a for a in store.approval_for_run(str(paused.id)).plan.actions if a.kind == "block_ips"]
    assert block.target.startswith("ingress/api") and block.before == "deny list: empty"
    assert block.after == "deny list: 198.51.100.0/24, 203.0.113.7/32"
    run.resume(paused.id, approve=True, approver="ivan", reason="contain")
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    annotations = world.cluster.get("ingresses", "sandbox", "api")["metadata"]["annotations"]
    assert annotations[DENYLIST] == "198.51.100.0/24,203.0.113.7/32"
    assert not world.cluster.list("networkpolicies", "sandbox"), "no NetworkPolicy with this strategy"


def test_drill_clean_up_keeps_an_incidents_block(world):
    from incidents.drills import CATALOG
    from tasks.context import RunContext
    from tasks.faults import LEAK_SOURCE, cleanup, inject

    ctx = RunContext.load("sandbox", "api")
    state = inject(ctx, CATALOG["leaked-credential"])
    with ctx.kubernetes() as kube:  # a real incident's block, and the drill's own
        kube.block_cidrs("sandbox", "block-suspicious-ips", "api", ["198.51.100.7/32", f"{LEAK_SOURCE}/32"])
    done = cleanup(ctx, state)
    with ctx.kubernetes() as kube:
        assert kube.blocked_by_policy("sandbox", "block-suspicious-ips") == ["198.51.100.7/32"]
    assert any("198.51.100.7/32 stay blocked" in line for line in done)


def test_rotation_says_the_credential_must_be_revoked_at_its_issuer(world, store):
    from flows.security_incident import security_incident
    from incidents.followups import FollowUpStore

    run = FlowThread(security_incident, service="api", alert=ALERT)
    paused = run.wait_paused()
    [rotate] = [a for a in store.approval_for_run(str(paused.id)).plan.actions if a.kind == "rotate_secrets"]
    assert "valid at their issuer until revoked there" in rotate.after
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
    http.post(f"{world.url}/_sandbox/load", json={"service": "api", "rps": 200})
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
        http.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
                                                         "path": "/acme/incidents/issues", "count": 1})
        issue = github.create_issue("acme/incidents", "[P1] api: lost answer", "body of the lost answer", ["incident"])
        assert [i["number"] for i in world.github.repo("acme/incidents").issues] == [issue.number]
        http.post(f"{world.url}/_sandbox/faults", json={"target": "github", "lose_response": True,
                                                         "path": "/comments", "count": 1})
        github.comment("acme/incidents", issue.number, "a status update")
        assert [c["body"] for c in world.github.repo("acme/incidents").comments[issue.number]] == ["a status update"]


def _admits_from_outside(policy: dict, address: str) -> bool:
    """Whether a NetworkPolicy admits a client outside the cluster (Kubernetes semantics: an
    ipBlock admits an address of its own family inside `cidr` and outside every `except`)."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    for rule in policy["spec"].get("ingress", []):
        for peer in rule.get("from", []):
            block = peer.get("ipBlock")
            if not block:
                continue
            cidr = ipaddress.ip_network(block["cidr"])
            if cidr.version == ip.version and ip in cidr and not any(
                    ip in ipaddress.ip_network(e) for e in block.get("except", [])):
                return True
    return False


@pytest.mark.parametrize("cidrs, blocked, admitted", [
    (["203.0.113.7/32"], ["203.0.113.7"], ["198.51.100.9", "2001:db8:9::1"]),
    (["2001:db8:1:2::7/128"], ["2001:db8:1:2::7"], ["198.51.100.9", "2001:db8:9::1"]),
    (["203.0.113.0/24", "2001:db8:1::/48"], ["203.0.113.99", "2001:db8:1:5::1"], ["198.51.100.9", "2001:db8:9::1"]),
], ids=["ipv4", "ipv6", "mixed"])
def test_a_block_of_one_family_still_admits_every_outside_client_of_the_other(world, cidrs, blocked, admitted):
    from tasks.context import RunContext

    ctx = RunContext.load("sandbox", "api")
    with ctx.kubernetes() as kube:
        kube.block_cidrs("sandbox", "block-suspicious-ips", "api", cidrs)
    policy = world.cluster.get("networkpolicies", "sandbox", "block-suspicious-ips")
    for address in blocked:
        assert not _admits_from_outside(policy, address), f"{address} is blocked"
    for address in admitted:
        assert _admits_from_outside(policy, address), f"{address} is still admitted: {policy['spec']}"


def test_the_plan_shows_what_a_block_admits_in_both_families():
    from incidents.security_rules import admitted_ranges

    assert admitted_ranges({"2001:db8:1:2::7/128"}) == \
        "IPv4 0.0.0.0/0 except nothing and IPv6 ::/0 except 2001:db8:1:2::7/128"
    assert admitted_ranges({"203.0.113.7/32", "2001:db8::/64"}) == \
        "IPv4 0.0.0.0/0 except 203.0.113.7/32 and IPv6 ::/0 except 2001:db8::/64"


# -- containment that never outlives its reason unnoticed ---------------------------------------------
def _contained(world, store) -> int:
    """A security incident whose block (NetworkPolicy) and debug logging were approved and applied."""
    from flows.security_incident import security_incident

    run = FlowThread(security_incident, service="api", alert=ALERT)
    run.resume(run.wait_paused().id, approve=True, approver="ivan", reason="contain")
    result = run.join(120)
    assert result["outcome"] == "resolved", result
    return result["incident_id"]


def test_a_restriction_added_after_a_block_is_reported_and_the_block_lifted_by_a_person(world, store):
    """NetworkPolicies add up: a block from an earlier incident ("all but two addresses") voids a
    restriction the team adds later. The watch reports it once, with what to do; a person lifts it."""
    from datetime import datetime, timezone

    from incidents.action_params import IngressDenylistBlock, NetworkPolicyBlock
    from integrations.kubernetes_security import DENYLIST
    from tasks.containment import lift
    from tasks.watch import sweep

    incident_id = _contained(world, store)
    standing = {c.kind: c for c in store.containments("sandbox") if c.incident_id == incident_id}
    assert set(standing) == {"block_ips", "enable_logging"}
    block = standing["block_ips"]
    assert isinstance(block.params, NetworkPolicyBlock), "read back as the kind's model"
    assert block.expires_at > datetime.now(timezone.utc) and sorted(block.params.cidrs) == \
        ["198.51.100.0/24", "203.0.113.7/32"]
    assert sweep("sandbox").containment.widening == [], "nothing else selects the pods yet"

    world.cluster.create("networkpolicies", "sandbox", ONLY_FROM_INGRESS)  # the team restricts api later
    assert sweep("sandbox").containment.widening == [block.id]
    assert sweep("sandbox").containment.widening == [], "reported once"
    told = [m["text"] for m in world.slack_messages if m["text"].startswith("⚠️ CONTAINMENT WIDENS ACCESS")]
    assert len(told) == 1 and "api-only-from-ingress-nginx" in told[0] and f"lift {block.id}" in told[0]
    assert any(e.kind == "containment_widens" for e in store.timeline(incident_id))
    assert any("CONTAINMENT WIDENS ACCESS" in c["body"] for c in world.github.repo("acme/incidents").comments.get(
        store.get(incident_id).github_issue, []))

    lift("sandbox", block.id, "ivan", "the team's policy restricts api now", move_to_ingress=True)
    names = {p["metadata"]["name"] for p in world.cluster.list("networkpolicies", "sandbox")}
    assert names == {"api-only-from-ingress-nginx"}, "the widening policy is gone, the team's stays"
    lifted = store.containment(block.id)
    assert not lifted.active and lifted.lifted_by == "ivan"
    assert any(e.kind == "containment_lifted" and e.actor == "ivan" for e in store.timeline(incident_id))
    denied = world.cluster.get("ingresses", "sandbox", "api")["metadata"]["annotations"][DENYLIST]
    assert denied == "198.51.100.0/24,203.0.113.7/32", "moved to the Ingress's deny list"
    [moved] = [c for c in store.containments("sandbox") if c.incident_id == incident_id and c.kind == "block_ips"]
    assert isinstance(moved.params, IngressDenylistBlock) and moved.params.cidrs == block.params.cidrs
    assert moved.target.startswith("ingress/api"), \
        "the moved block stands in its turn, with an expiry"


def test_a_raised_log_level_is_turned_back_when_it_expires_and_an_expired_block_is_put_to_a_person(world, store):
    from datetime import datetime, timedelta, timezone

    from tasks.watch import sweep

    incident_id = _contained(world, store)
    assert world.cluster.get("configmaps", "sandbox", "api-config")["data"]["log_level"] == "debug"
    standing = {c.kind: c for c in store.containments("sandbox") if c.incident_id == incident_id}
    assert sweep("sandbox").containment.reverted == [], "not expired yet"
    later = datetime.now(timezone.utc) + timedelta(hours=7)  # logging_hours 6, block_hours 72
    done = sweep("sandbox", now=later).containment
    assert done.reverted == [standing["enable_logging"].id] and done.asked == []
    assert world.cluster.get("configmaps", "sandbox", "api-config")["data"]["log_level"] == "info"
    assert store.containment(standing["block_ips"].id).active, "a block is never lifted by the watch"

    much_later = datetime.now(timezone.utc) + timedelta(hours=73)
    assert sweep("sandbox", now=much_later).containment.asked == [standing["block_ips"].id]
    assert sweep("sandbox", now=much_later).containment.asked == [], "asked once"
    asked = [m["text"] for m in world.slack_messages if m["text"].startswith("⏳ CONTAINMENT EXPIRED")]
    assert len(asked) == 1 and f"containment lift {standing['block_ips'].id}" in asked[0]
    assert world.cluster.get("networkpolicies", "sandbox", "block-suspicious-ips"), "still in place"
    world.cluster.delete("networkpolicies", "sandbox", "block-suspicious-ips")  # someone removes it by hand
    assert sweep("sandbox", now=much_later).containment.gone == [standing["block_ips"].id]
    assert not store.containment(standing["block_ips"].id).active, "what no longer stands is not listed"
