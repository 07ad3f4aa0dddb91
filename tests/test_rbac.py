"""Installing for real: the shipped manifests render, hold the runbooks to least privilege, and a
pod's own ServiceAccount reaches the cluster.

The sandbox's Kubernetes API authorizes the runbooks' token against the Roles that
`kubectl kustomize deploy/kubernetes/overlays/sandbox` renders, for the whole suite (the
`world` fixture); what the suite used is compared with what the Role grants at the end
(tests/test_zz_secret_canaries.py runs last)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from integrations.errors import IntegrationError
from integrations.kubernetes import InCluster, KubernetesClient
from sandbox.rbac import OVERLAYS, ROOT, Rbac, render
from sandbox.world import RUNBOOKS_KUBE_TOKEN, RUNBOOKS_USER
from tests.conftest import FlowThread, kubectl

BASE = ROOT / "deploy" / "kubernetes" / "base"
SHIPPED_OVERLAYS = sorted(p.name for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())
ROLE = "runbooks-responder"
# requests tests make on purpose to see a refusal (not a gap in the Role)
PROVOKED = {("list", "", "namespaces", "")}

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is installed by `make test`")


def _docs(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(render(overlay)) if d]


def role_usage_problems(allowed: set[tuple[str, ...]] | list, refused: set[tuple[str, ...]] | list) -> list[str]:
    """What is wrong with the Role given the runbooks' requests of a whole suite: (verb, group,
    resource, namespace) allowed and refused. Empty when every grant was used and every refusal
    was provoked on purpose (tests/test_zz_secret_canaries.py, and tests/lanes.py over its lanes)."""
    used = {(verb, group, resource) for verb, group, resource, _ in allowed}
    problems = []
    unused = grants(Rbac.from_manifests(render("sandbox")), ROLE) - used
    if unused:
        problems.append(f"{ROLE} grants what no test used: {sorted(unused)}")
    unprovoked = {tuple(grant) for grant in refused} - PROVOKED
    if unprovoked:
        problems.append(f"the runbooks were refused: {sorted(unprovoked)}")
    return problems


def grants(rbac: Rbac, role: str) -> set[tuple[str, str, str]]:
    """(verb, group, resource[/subresource]) each a rule of `role` grants."""
    return {(verb, group, resource) for rule in rbac.roles[("", role)]
            for verb in rule.verbs for group in rule.groups for resource in rule.resources}


@needs_kubectl
@pytest.mark.parametrize("overlay", SHIPPED_OVERLAYS)
def test_each_overlay_renders_hardened_workloads_and_no_secret(overlay):
    docs = _docs(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "RoleBinding", "Deployment", "Service",
            "PodDisruptionBudget", "ConfigMap"} <= kinds, kinds
    assert "Secret" not in kinds, "secrets are referenced, never shipped"
    cluster_wide = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert [b["roleRef"]["name"] for b in cluster_wide] == ["runbooks-node-reader"], "only nodes are cluster-wide"
    node_reader = next(d for d in docs if d["kind"] == "ClusterRole"
                       and d["metadata"]["name"] == "runbooks-node-reader")
    assert node_reader["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]
    for binding in (d for d in docs if d["kind"] == "RoleBinding"):
        assert binding["roleRef"]["kind"] == "ClusterRole" and binding["metadata"]["namespace"] != "runbooks"
    for dep in (d for d in docs if d["kind"] == "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "runbooks" and pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                          "capabilities": {"drop": ["ALL"]}}, (dep["metadata"]["name"], sc)
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
            assert all("value" not in e for e in container.get("env", []) if "SECRET" in e["name"] or
                       "KEY" in e["name"] or "TOKEN" in e["name"]), "a secret's value written into a manifest"
    intake = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "runbooks-intake")
    container = intake["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_every_grant_has_a_one_line_reason():
    for source in BASE.glob("rbac-*.yaml"):
        lines = source.read_text().splitlines()
        for n, line in enumerate(lines):
            if line.strip().startswith("- apiGroups:"):
                reason = lines[n - 1].strip()
                assert re.match(r"# why: \S.{10,}", reason), f"{source.name}:{n + 1}: a rule without a '# why:' line"


@needs_kubectl
def test_read_only_grants_no_write_and_no_secret():
    rbac = Rbac.from_manifests(render("read-only"))
    read_only = grants(rbac, "runbooks-read-only")
    assert {verb for verb, _, _ in read_only} <= {"get", "list", "watch"}
    assert not [g for g in read_only if g[2].startswith("secrets")]
    assert read_only <= grants(rbac, ROLE) | {("get", "apps", "deployments/scale")}


def test_a_request_the_role_does_not_grant_gets_kubernetes_403(world):
    kube = KubernetesClient(str(world.runbooks_kubeconfig))
    with pytest.raises(IntegrationError) as refused:
        kube._call("list namespaces", kube.core.list_namespace)
    assert refused.value.status == 403
    assert f'User "{RUNBOOKS_USER}" cannot list resource "namespaces"' in refused.value.reason
    body = kubectl(world, "get", "namespaces", "--token", RUNBOOKS_KUBE_TOKEN, check=False)
    assert body.returncode != 0 and "Forbidden" in body.stderr + body.stdout
    can_i = kubectl(world, "auth", "can-i", "delete", "deployments", "--token", RUNBOOKS_KUBE_TOKEN, check=False)
    assert can_i.returncode == 1 and can_i.stdout.startswith("no"), can_i  # kubectl asks in protobuf
    assert kubectl(world, "auth", "can-i", "get", "pods", "--subresource=log", "--token", RUNBOOKS_KUBE_TOKEN,
                   check=False).stdout.strip() == "yes"
    assert kube.can_i("patch", "apps", "deployments", "sandbox", "api")
    assert not kube.can_i("delete", "apps", "deployments", "sandbox", "api")
    assert not kube.can_i("patch", "apps", "deployments", "default", "api"), "bound in `sandbox` only"


def _service_account_dir(tmp_path: Path, world, token: str) -> InCluster:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(world.cert_pem)
    (directory / "namespace").write_text("runbooks\n")
    host, port = world.kube_url.removeprefix("https://").rsplit(":", 1)
    return InCluster(str(directory), {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port})


def test_in_cluster_auth_reads_the_projected_token_and_follows_its_rotation(world, tmp_path):
    first, second = "projected-token-1", "projected-token-2"
    world.issue_token(first)
    try:
        where = _service_account_dir(tmp_path, world, first)
        assert where.namespace() == "runbooks"
        kube = KubernetesClient(None, in_cluster=where)
        assert kube.get_deployment("sandbox", "api")["metadata"]["name"] == "api"
        # the kubelet writes a new token before the old one expires; the old one then stops working
        world.issue_token(second)
        token = Path(where.directory, "token")
        token.with_suffix(".new").write_text(second)
        token.with_suffix(".new").replace(token)
        world.revoke_token(first)
        assert kube.get_deployment("sandbox", "api")["metadata"]["name"] == "api"
    finally:
        world.revoke_token(first)
        world.revoke_token(second)


def test_in_cluster_auth_without_its_files_says_what_is_missing(tmp_path):
    where = InCluster(str(tmp_path / "nothing"),
                      {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    with pytest.raises(IntegrationError, match="token file does not exist"):
        KubernetesClient(None, in_cluster=where)


def test_with_a_read_only_role_the_runbook_diagnoses_plans_and_abstains(world):
    """frontend rolls back with kubectl's undo: a patch the read-only Role does not grant. The
    run diagnoses and plans, asks nobody to approve, and says which permission is missing."""
    from flows.service_down import service_down

    broken = "registry.sandbox.local/acme/frontend:v4-broken"
    kubectl(world, "set", "image", "deployment/frontend", f"frontend={broken}")
    world.use_rbac("sandbox-read-only")
    try:
        result = FlowThread(service_down, service="frontend", severity="P1").join()
    finally:
        world.use_rbac("sandbox")
    assert result["outcome"] == "abstained", result
    assert result["plan"] and "rollout undo" in " ".join(result["plan"])
    texts = [m["text"] for m in world.slack_messages]
    assert any("does not allow patch deployments (apps) frontend in namespace sandbox" in t for t in texts), texts
    assert not [t for t in texts if "APPROVAL NEEDED" in t]
    image = kubectl(world, "get", "deployment/frontend", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
    assert image.stdout == broken, "nothing may change"
