"""Typed views of what the project reads from Kubernetes objects. The client reads an object
once and hands out its view; no task digs `["spec"]["template"]["spec"]["containers"][0]`, and
a default Kubernetes applies (one replica when `spec.replicas` is unset) is applied here, once.

A view holds only what the runbooks read; the object itself stays with the client (the rollout
and undo rules in integrations/kubernetes.py work on kubectl's own shapes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

REVISION = "deployment.kubernetes.io/revision"
TIMED_OUT_REASON = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class RolloutStatus:
    done: bool
    message: str
    failed: bool = False  # the progress deadline was exceeded


def rollout_status_of(deployment: Mapping[str, Any]) -> RolloutStatus:
    """kubectl rollout status's verdict for one observation of a Deployment (API JSON)."""
    metadata = deployment.get("metadata") or {}
    name = metadata.get("name", "")
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    if metadata.get("generation", 0) > status.get("observedGeneration", 0):
        return RolloutStatus(False, "Waiting for deployment spec update to be observed...")
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == TIMED_OUT_REASON:
            return RolloutStatus(False, f'deployment "{name}" exceeded its progress deadline', failed=True)
    replicas = spec.get("replicas", 1)
    updated, total = status.get("updatedReplicas", 0), status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < replicas:
        return RolloutStatus(False, f'Waiting for deployment "{name}" rollout to finish: '
                                    f"{updated} out of {replicas} new replicas have been updated...")
    if total > updated:
        return RolloutStatus(False, f'Waiting for deployment "{name}" rollout to finish: '
                                    f"{total - updated} old replicas are pending termination...")
    if available < updated:
        return RolloutStatus(False, f'Waiting for deployment "{name}" rollout to finish: '
                                    f"{available} of {updated} updated replicas are available...")
    return RolloutStatus(True, f'deployment "{name}" successfully rolled out')


@dataclass(frozen=True)
class ContainerView:
    name: str
    image: str
    memory_limit: str | None = None  # resources.limits.memory, as written (e.g. "256Mi")


@dataclass(frozen=True)
class DeploymentView:
    namespace: str
    name: str
    replicas: int  # spec.replicas; Kubernetes' default, 1, when unset
    paused: bool
    revision: int  # the deployment.kubernetes.io/revision annotation; 0 when absent or unreadable
    containers: tuple[ContainerView, ...]
    template_labels: Mapping[str, str] = field(default_factory=dict)
    template_annotations: Mapping[str, str] = field(default_factory=dict)
    selector: str = ""  # the pod selector's matchLabels as a label selector (`app=api,tier=web`)
    rollout: RolloutStatus = RolloutStatus(False, "not observed")  # kubectl rollout status's verdict

    def container(self, name: str | None = None) -> ContainerView:
        """The named container, else the first (kubectl's default container); an empty one
        when the template has none."""
        named = [c for c in self.containers if name and c.name == name]
        return (named or list(self.containers) or [ContainerView("", "")])[0]

    @property
    def image(self) -> str:
        return self.container().image


@dataclass(frozen=True)
class AutoscalerView:
    """The HorizontalPodAutoscaler that scales a deployment: its name and replica bounds."""

    name: str
    min: int
    max: int


def _revision(metadata: Mapping[str, Any]) -> int:
    try:
        return int((metadata.get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def deployment_view(obj: Mapping[str, Any]) -> DeploymentView:
    """The view of a Deployment as the API serialises it (camelCase keys)."""
    metadata, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    template = spec.get("template") or {}
    containers = tuple(
        ContainerView(name=str(c.get("name", "")), image=str(c.get("image", "")),
                      memory_limit=((c.get("resources") or {}).get("limits") or {}).get("memory"))
        for c in (template.get("spec") or {}).get("containers") or [])
    replicas = spec.get("replicas")
    return DeploymentView(
        namespace=str(metadata.get("namespace", "")), name=str(metadata.get("name", "")),
        replicas=1 if replicas is None else int(replicas), paused=bool(spec.get("paused")),
        revision=_revision(metadata), containers=containers,
        template_labels=dict((template.get("metadata") or {}).get("labels") or {}),
        template_annotations=dict((template.get("metadata") or {}).get("annotations") or {}),
        selector=",".join(f"{k}={v}" for k, v in sorted(((spec.get("selector") or {}).get("matchLabels")
                                                          or {}).items())),
        rollout=rollout_status_of(obj))
