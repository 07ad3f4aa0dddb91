"""Each Kubernetes remedy through the fake Kubernetes (tests/fake_kubernetes.py, held to the
client's protocol): the re-check first, then the remedy, then what changed on the target. The
same remedies against the sandbox's cluster are in tests/test_real_cluster_safety.py and the
scenario tests."""

from __future__ import annotations

import base64

import pytest

from incidents.plans import Grant, Plan, PlannedAction
from integrations.kubernetes import Revision
from integrations.kubernetes_views import REVISION
from tasks.prechecks import TargetChanged, recheck
from tasks.remedies import REMEDIES
from tests.action_samples import sample_action
from tests.fake_kubernetes import FakeKubernetes, Policy, deployment
from tests.fakes import FakeWiring, context

OLD, NEW = "acme/api:v1.4.1", "acme/api:v1.5.0"


@pytest.fixture
def kube() -> FakeKubernetes:
    kube = FakeKubernetes()
    kube.deployments["sandbox", "api"] = deployment(3, NEW)
    kube.history["sandbox", "api"] = [Revision(2, "api-2", OLD, "", 0), Revision(3, "api-3", NEW, "", 3)]
    kube.configmaps["sandbox", "api-config"] = {"log_level": "info"}
    kube.configmaps["sandbox", "api-flags"] = {"circuit_breaker": "off"}
    kube.secrets["sandbox", "api-credentials"] = {"DB_PASSWORD": base64.b64encode(b"hunter2").decode(),
                                                  "API_KEY": base64.b64encode(b"k-1").decode()}
    kube.versions["sandbox", "api-credentials"] = 17
    kube.denylists["sandbox", "api"] = set()
    return kube


def _act(kube: FakeKubernetes, action: PlannedAction):
    """What execute() does for one approved action: read the target again, then act."""
    ctx = context(FakeWiring(kube=kube))
    recheck(ctx, action)
    return REMEDIES[action.kind].fn(ctx, action, Grant.issue(Plan(1, "api", "sandbox", (action,)), "sam", "why"))


def test_an_undo_goes_back_to_the_planned_revision_as_a_new_one(kube):
    result = _act(kube, sample_action("rollback by undo"))
    assert result.changed and OLD in result.detail
    assert kube.deployment("sandbox", "api").container(None).image == OLD
    assert kube.deployments["sandbox", "api"]["metadata"]["annotations"][REVISION] == "4"
    assert [r.revision for r in kube.revision_history("sandbox", "api")] == [4, 3, 2]


def test_an_undo_is_not_run_on_a_deployment_moved_since_the_plan(kube):
    kube.set_image("sandbox", "api", "app", "acme/api:v1.6.0")  # someone released again
    before = list(kube.calls)
    with pytest.raises(TargetChanged):
        _act(kube, sample_action("rollback by undo"))
    assert not [c for c in kube.calls[len(before):] if c.startswith("undo")]


def test_a_rotation_changes_the_planned_keys_and_never_reports_a_value(kube):
    result = _act(kube, sample_action("rotate a secret"))
    assert result.changed and kube.versions["sandbox", "api-credentials"] == 18
    values = kube.secrets["sandbox", "api-credentials"]
    assert base64.b64decode(values["DB_PASSWORD"]) != b"hunter2"
    assert not any(base64.b64decode(v).decode() in result.detail for v in values.values())
    changes = [c for c in kube.calls if not c.startswith("get")]
    assert changes[-2:] == ["set secret sandbox/api-credentials API_KEY,DB_PASSWORD", "restart sandbox/api"]
    assert "restarted api" in result.detail  # its consumers read the new values


def test_a_rotation_of_a_secret_changed_since_the_plan_is_refused(kube):
    kube.set_secret_values("sandbox", "api-credentials", {"API_KEY": "rotated by someone"})
    with pytest.raises(TargetChanged):
        _act(kube, sample_action("rotate a secret"))


def test_a_block_adds_to_the_policy_and_keeps_what_it_blocked(kube):
    kube.policies["sandbox", "block-api"] = Policy({"app": "api"}, {"198.51.100.0/24"})
    result = _act(kube, sample_action("block by policy"))
    assert result.changed
    assert kube.blocked_by_policy("sandbox", "block-api") == ["198.51.100.0/24", "203.0.113.7/32"]


def test_a_block_is_refused_where_another_policy_selects_the_pods(kube):
    """Policies add up: ours would widen what another policy's pods may receive."""
    kube.policies["sandbox", "block-api"] = Policy({"app": "api"}, {"198.51.100.0/24"})
    kube.policies["sandbox", "only-from-frontend"] = Policy({"app": "api"})
    with pytest.raises(TargetChanged, match="only-from-frontend"):
        _act(kube, sample_action("block by policy"))
    assert kube.blocked_by_policy("sandbox", "block-api") == ["198.51.100.0/24"]


def test_a_deny_at_the_ingress_writes_its_deny_list(kube):
    result = _act(kube, sample_action("deny at the ingress"))
    assert result.changed and kube.ingress_denylist("sandbox", "api") == ["203.0.113.7/32"]


def test_the_log_level_and_the_breaker_are_switched_in_their_configmaps(kube):
    assert _act(kube, sample_action("raise the log level")).changed
    assert kube.get_config_value("sandbox", "api-config", "log_level") == "debug"
    assert _act(kube, sample_action("circuit breaker")).changed
    assert kube.get_config_value("sandbox", "api-flags", "circuit_breaker") == "on"
    kube.configmaps["sandbox", "api-flags"]["circuit_breaker"] = "degraded"  # someone else's switch
    with pytest.raises(TargetChanged):
        _act(kube, sample_action("circuit breaker"))
