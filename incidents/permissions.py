"""The Kubernetes permissions an action needs to run, by kind of action: what the runbooks ask
the cluster before they ask anyone for an approval, and again before they act (a Role can
change in between). Mirrors the rules of deploy/kubernetes/base/rbac-responder.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from incidents.action_params import (
    ActionParams,
    CircuitBreaker,
    EnableLogging,
    IngressDenylistBlock,
    NetworkPolicyBlock,
    RollbackByUndo,
    RolloutRestart,
    RotateSecret,
    Scale,
)


@dataclass(frozen=True)
class Need:
    verb: str
    group: str
    resource: str
    namespace: str
    name: str = ""
    subresource: str = ""

    def describe(self) -> str:
        resource = self.resource + (f"/{self.subresource}" if self.subresource else "")
        group = f" ({self.group})" if self.group else ""
        target = f" {self.name}" if self.name else ""
        return f"{self.verb} {resource}{group}{target} in namespace {self.namespace}"


def needs(params: ActionParams) -> list[Need]:
    """What `params` writes in the cluster (its reads are diagnosis's, and checked there)."""
    match params:
        case RollbackByUndo(namespace=ns, deployment=name) | RolloutRestart(namespace=ns, deployment=name):
            return [Need("patch", "apps", "deployments", ns, name)]
        case Scale(namespace=ns, hpa=str(hpa)):
            return [Need("patch", "autoscaling", "horizontalpodautoscalers", ns, hpa)]
        case Scale(namespace=ns, deployment=name):
            return [Need("patch", "apps", "deployments", ns, name, "scale")]
        case CircuitBreaker(namespace=ns, configmap=str(configmap)) | EnableLogging(namespace=ns, configmap=configmap):
            return [Need("patch", "", "configmaps", ns, configmap)]
        case RotateSecret(namespace=ns, secret=name):
            return [Need("get", "", "secrets", ns, name), Need("patch", "", "secrets", ns, name)]
        case NetworkPolicyBlock(namespace=ns, policy=policy):
            return [Need("create", "networking.k8s.io", "networkpolicies", ns),
                    Need("update", "networking.k8s.io", "networkpolicies", ns, policy)]
        case IngressDenylistBlock(namespace=ns, ingress=ingress):
            return [Need("patch", "networking.k8s.io", "ingresses", ns, ingress)]
    return []
