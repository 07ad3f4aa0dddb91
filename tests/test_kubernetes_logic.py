"""kubectl's rollout status and rollout undo rules, as pure functions."""

from __future__ import annotations

import pytest

from integrations.kubernetes import ANNOTATIONS_TO_SKIP, REVISION, plan_undo, rollout_status_of


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
