"""kubectl's rollout status and rollout undo rules, as pure functions."""

from __future__ import annotations

import pytest

from integrations.kubernetes import ANNOTATIONS_TO_SKIP, plan_undo
from integrations.kubernetes_views import REVISION, rollout_status_of


def deployment(generation=2, observed=2, replicas=3, updated=3, total=3, available=3, reason="NewReplicaSetAvailable",
               image="app:v3", annotations=None, paused=False):
    return {
        "metadata": {"name": "api", "uid": "dep-uid", "generation": generation,
                     "annotations": annotations if annotations is not None else {REVISION: "3"}},
        "spec": {"replicas": replicas, "paused": paused, "selector": {"matchLabels": {"app": "api"}},
                 "template": {"metadata": {"labels": {"app": "api"}},
                              "spec": {"containers": [{"name": "api", "image": image}]}}},
        "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                   "availableReplicas": available,
                   "conditions": [{"type": "Progressing", "status": "True", "reason": reason}]},
    }


def replicaset(revision, image, owner="dep-uid", extra_annotations=None, name=None):
    return {
        "metadata": {
            "name": name or f"api-{revision}",
            "annotations": {REVISION: str(revision), **(extra_annotations or {})},
            "ownerReferences": [{"uid": owner, "controller": True}],
        },
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "api", "pod-template-hash": f"h{revision}"}},
                "spec": {"containers": [{"name": "api", "image": image}]},
            }
        },
    }


@pytest.mark.parametrize(
    "kwargs, done, failed, text",
    [
        ({}, True, False, 'deployment "api" successfully rolled out'),
        ({"generation": 3, "observed": 2}, False, False, "Waiting for deployment spec update to be observed..."),
        (
            {"reason": "ProgressDeadlineExceeded", "available": 0},
            False,
            True,
            'deployment "api" exceeded its progress deadline',
        ),
        ({"updated": 1}, False, False, "1 out of 3 new replicas have been updated"),
        ({"total": 5}, False, False, "2 old replicas are pending termination"),
        ({"available": 1}, False, False, "1 of 3 updated replicas are available"),
    ],
)
def test_rollout_status_follows_kubectl(kwargs, done, failed, text):
    status = rollout_status_of(deployment(**kwargs))
    assert (status.done, status.failed) == (done, failed)
    assert text in status.message


def test_undo_picks_the_previous_revision_and_builds_kubectls_patch():
    dep = deployment(annotations={REVISION: "3", "kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "x"})
    history = [replicaset(1, "app:v1"), replicaset(3, "app:v3"),
               replicaset(2, "app:v2", extra_annotations={"change-cause": "release v2", REVISION: "2"}),
               replicaset(9, "app:other", owner="someone-else")]
    plan = plan_undo(dep, history)
    assert (plan.from_revision, plan.to_revision, plan.image) == (3, 2, "app:v2")
    template_op, annotations_op = plan.patch
    assert template_op == {"op": "replace", "path": "/spec/template", "value": {
        "metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": "app:v2"}]}}}
    assert "pod-template-hash" not in template_op["value"]["metadata"]["labels"]
    # kubectl keeps the skip-listed annotations of the deployment and copies the rest from the ReplicaSet
    assert annotations_op["path"] == "/metadata/annotations"
    assert annotations_op["value"] == {REVISION: "3", "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                       "change-cause": "release v2"}
    assert "team" not in annotations_op["value"]
    assert "deployment.kubernetes.io/revision-history" in ANNOTATIONS_TO_SKIP


def test_undo_to_a_given_revision_and_errors():
    dep = deployment()
    history = [replicaset(1, "app:v1"), replicaset(2, "app:v2"), replicaset(3, "app:v3")]
    assert plan_undo(dep, history, to_revision=1).image == "app:v1"
    with pytest.raises(ValueError, match="unable to find specified revision 7"):
        plan_undo(dep, history, to_revision=7)
    with pytest.raises(ValueError, match="no rollout history found"):
        plan_undo(dep, [replicaset(3, "app:v3")])
    with pytest.raises(ValueError, match="paused deployment"):
        plan_undo(deployment(paused=True), history)


def test_undo_is_skipped_when_the_template_already_matches():
    dep = deployment(image="app:v2")
    plan = plan_undo(dep, [replicaset(2, "app:v2"), replicaset(3, "app:v3")], to_revision=2)
    assert plan.patch is None and plan.to_revision == 2


# -- nodes -------------------------------------------------------------------------------------------
def _sandbox_cluster():
    from sandbox.cluster import Cluster, Seed, seed_deployment

    cluster = Cluster(ready_delay=0)
    cluster.create("namespaces", "", {"metadata": {"name": "shop"}})
    seed_deployment(cluster, Seed("shop", "api", ["app:v1", "app:v2"], replicas=3, age_hours=[72, 48]))
    cluster.tick()
    return cluster


def _summaries(cluster):
    from integrations.kubernetes import summarize_node, summarize_pod

    return ([summarize_node(n) for n in cluster.list("nodes")],
            [summarize_pod(p) for p in cluster.list("pods", "shop")])


def test_a_node_that_stops_reporting_takes_its_pods_out_and_new_pods_go_elsewhere():
    """As Kubernetes does it: the node's Ready is Unknown and it is tainted; its pods are marked not
    Ready (their containers keep their last state); the scheduler places new pods on Ready nodes."""
    from tasks.nodes import node_facts, summarize

    cluster = _sandbox_cluster()
    nodes, pods = _summaries(cluster)
    assert [p.node for p in pods].count("sandbox-node-1") == 2 and all(p.ready for p in pods)
    facts = node_facts(nodes, pods)
    assert summarize(facts) == (True, "the 2 nodes the pods run on are Ready, without pressure")

    assert cluster.set_node_state("sandbox-node-1", "NotReady") == 2
    nodes, pods = _summaries(cluster)
    lost = [p for p in pods if p.node == "sandbox-node-1"]
    assert lost and not any(p.ready for p in lost) and all(p.ready for p in pods if p not in lost)
    assert cluster.ready_pods("shop", "api") == 1
    node = next(n for n in nodes if n.name == "sandbox-node-1")
    assert node.ready == "Unknown" and node.unschedulable and node.reason == "NodeStatusUnknown"
    facts = node_facts(nodes, pods)
    assert summarize(facts) == (False, "sandbox-node-1 NotReady (2 pods)") and facts.schedulable

    cluster.patch("deployments", "shop", "api", {"spec": {"replicas": 5}}, "application/merge-patch+json")
    cluster.tick()
    _, pods = _summaries(cluster)
    assert [p.node for p in pods].count("sandbox-node-2") == 3 and cluster.ready_pods("shop", "api") == 3

    cluster.set_node_state("sandbox-node-2", "MemoryPressure")
    cluster.patch("deployments", "shop", "api", {"spec": {"replicas": 6}}, "application/merge-patch+json")
    cluster.tick()
    nodes, pods = _summaries(cluster)
    facts = node_facts(nodes, pods)
    assert facts.unscheduled == 1 and facts.schedulable is False
    assert summarize(facts) == (False, "sandbox-node-1 NotReady (2 pods); sandbox-node-2 MemoryPressure (3 pods); "
                                       "1 pods wait for a node (Pending, unschedulable); no node of the cluster takes "
                                       "new pods")

    cluster.set_node_state("sandbox-node-1", "Ready")
    cluster.tick()
    _, pods = _summaries(cluster)
    assert all(p.node for p in pods) and cluster.ready_pods("shop", "api") == 6


# -- resource usage ----------------------------------------------------------------------------------
@pytest.mark.parametrize("quantity, cores_m", [("250m", 250.0), ("2", 2000.0), ("250000000n", 250.0),
                                               ("1500u", 1.5), ("0.5", 500.0)])
def test_cpu_quantities_read_as_kubernetes_writes_them(quantity, cores_m):
    from integrations.kubernetes_usage import millicores

    assert millicores(quantity) == pytest.approx(cores_m)


@pytest.mark.parametrize("quantity, mib", [("256Mi", 256.0), ("262144Ki", 256.0), ("1Gi", 1024.0),
                                           ("1048576", 1.0), ("1G", 1e9 / 2**20), ("129e6", 129e6 / 2**20),
                                           ("1048576000m", 1.0), ("1Pi", 2**30)])
def test_memory_quantities_read_as_kubernetes_writes_them(quantity, mib):
    from integrations.kubernetes_usage import mebibytes

    assert mebibytes(quantity) == pytest.approx(mib)


def test_a_quantity_that_is_not_one_is_a_clear_error():
    from integrations.kubernetes_usage import BadQuantity, millicores

    with pytest.raises(BadQuantity, match="not a CPU quantity: '12cores'"):
        millicores("12cores")


def test_usage_near_the_memory_limit_is_a_finding_and_cpu_over_request_is_said():
    from incidents.check_facts import PodUsageFacts, UsageFacts
    from tasks.usage import summarize

    def facts(memory: float) -> UsageFacts:
        return UsageFacts(pods=[PodUsageFacts(pod="api-1", cpu_m=250.0, memory_mi=memory)], cpu_request_m=100.0,
                          memory_limit_mi=256.0)

    ok, summary, details = summarize(facts(96.0))
    assert ok is True and summary == "CPU up to 250m per pod, 2.5x its 100m request; memory up to 96Mi of its 256Mi " \
                                     "limit (38%)"
    assert details == ("pod api-1: CPU 250m (250% of 100), memory 96Mi (38% of 256)",)
    assert summarize(facts(250.0))[0] is False
    assert summarize(UsageFacts())[0] is None


def test_a_deployment_reads_as_its_view_with_kubernetes_defaults_applied_once():
    from integrations.kubernetes_views import ContainerView, deployment_view

    full = deployment(annotations={REVISION: "7"}, paused=True)
    full["metadata"]["namespace"] = "sandbox"
    full["spec"]["template"]["metadata"]["annotations"] = {"kubectl.kubernetes.io/restartedAt": "2026-12-01T00:00:00Z"}
    full["spec"]["template"]["spec"]["containers"] = [
        {"name": "sidecar", "image": "proxy:1"},
        {"name": "api", "image": "app:v7", "resources": {"limits": {"memory": "256Mi"}}}]
    view = deployment_view(full)
    assert (view.namespace, view.name, view.replicas, view.paused, view.revision) == ("sandbox", "api", 3, True, 7)
    assert view.container("api") == ContainerView("api", "app:v7", "256Mi")
    assert view.image == "proxy:1" and view.container("missing").name == "sidecar"  # kubectl's default: the first
    assert view.template_labels == {"app": "api"} and "kubectl.kubernetes.io/restartedAt" in view.template_annotations
    assert view.rollout == rollout_status_of(full) and view.rollout.done
    full["spec"]["selector"] = {"matchLabels": {"tier": "web", "app": "api"}}
    assert deployment_view(full).selector == "app=api,tier=web"
    bare = {"metadata": {"name": "db", "annotations": {REVISION: "not a number"}}, "spec": {"template": {}}}
    view = deployment_view(bare)
    assert (view.replicas, view.paused, view.revision, view.image) == (1, False, 0, "")  # unset replicas: 1
    assert view.selector == "" and not view.rollout.done  # no replica observed yet
    assert deployment_view(deployment(replicas=0)).replicas == 0  # scaled to zero is not "unset"
