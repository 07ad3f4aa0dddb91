"""Kubernetes through the official client, with kubectl's semantics for rollout status,
rollout restart and rollout undo. The decision logic is in pure functions so it can be
tested without a cluster."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, cast

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from integrations.errors import Closing, IntegrationError, gave_up, refusal
from integrations.http import RetryPolicy, is_transient
from integrations.kubernetes_config import ConfigObjects
from integrations.kubernetes_security import SecurityObjects
from integrations.kubernetes_usage import ResourceUsage
from integrations.kubernetes_views import (
    REVISION,
    AutoscalerView,
    DeploymentView,
    RolloutStatus,
    deployment_view,
    rollout_status_of,
)

HASH_LABEL = "pod-template-hash"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# Annotations kubectl keeps from the deployment, never copies from the ReplicaSet, on undo.
ANNOTATIONS_TO_SKIP = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})
# -- pure logic (kubectl's rules) ------------------------------------------------------------
def revision_of(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata", {}).get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _without_hash(template: dict[str, Any]) -> dict[str, Any]:
    clean = copy.deepcopy(template)
    (clean.get("metadata", {}).get("labels") or {}).pop(HASH_LABEL, None)
    return clean


def owned_replicasets(deployment: dict[str, Any], replicasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    uid = deployment["metadata"]["uid"]
    return [
        rs
        for rs in replicasets
        if any(ref.get("uid") == uid and ref.get("controller") for ref in rs["metadata"].get("ownerReferences") or [])
    ]


@dataclass(frozen=True)
class UndoPlan:
    from_revision: int
    to_revision: int
    image: str
    patch: list[Any] | None  # None: the deployment already runs that template (kubectl: "skipped rollback")


def plan_undo(deployment: dict[str, Any], replicasets: list[dict[str, Any]], to_revision: int = 0) -> UndoPlan:
    """kubectl rollout undo, computed client-side: pick the ReplicaSet for the revision (the
    previous one by default) and build the JSON patch that puts its template back."""
    name = deployment["metadata"]["name"]
    if deployment.get("spec", {}).get("paused"):
        raise ValueError(f"you cannot rollback a paused deployment {name!r}; resume it first")
    latest = previous = None
    latest_rev = previous_rev = -1
    target = None
    for rs in owned_replicasets(deployment, replicasets):
        rev = revision_of(rs)
        if to_revision == 0:
            if rev > latest_rev:
                previous, previous_rev, latest, latest_rev = latest, latest_rev, rs, rev
            elif rev > previous_rev:
                previous, previous_rev = rs, rev
        elif rev == to_revision:
            target = rs
    if to_revision > 0 and target is None:
        raise ValueError(f"unable to find specified revision {to_revision} in history of deployment {name!r}")
    if to_revision == 0:
        if previous is None:
            raise ValueError(f"no rollout history found for deployment {name!r}")
        target = previous
    assert target is not None  # found, or the previous revision (both checked above)
    template = _without_hash(target["spec"]["template"])
    image = (template.get("spec", {}).get("containers") or [{}])[0].get("image", "")
    current = revision_of(deployment)
    if template == _without_hash(deployment["spec"]["template"]):
        return UndoPlan(current, revision_of(target), image, None)
    dep_ann = deployment["metadata"].get("annotations") or {}
    annotations = {k: v for k, v in dep_ann.items() if k in ANNOTATIONS_TO_SKIP}
    annotations.update({k: v for k, v in (target["metadata"].get("annotations") or {}).items()
                        if k not in ANNOTATIONS_TO_SKIP})
    patch = [{"op": "replace", "path": "/spec/template", "value": template},
             {"op": "replace", "path": "/metadata/annotations", "value": annotations}]
    return UndoPlan(current, revision_of(target), image, patch)


def selector_of(deployment: dict[str, Any]) -> str:
    """The deployment's pod selector as a label selector string (`app=api,tier=web`)."""
    return deployment_view(deployment).selector


def container_image(deployment: dict[str, Any], container: str | None = None) -> str:
    """The image of the named container of a Deployment's (or ReplicaSet's) pod template, else the first's."""
    return deployment_view(deployment).container(container).image


# -- summaries returned to callers ----------------------------------------------------------
@dataclass(frozen=True)
class PodSummary:
    name: str
    phase: str
    ready: bool
    restarts: int
    waiting_reason: str | None
    last_termination_reason: str | None
    last_exit_code: int | None
    image: str
    node: str | None = None  # None: not scheduled yet (Pending)


@dataclass(frozen=True)
class EventSummary:
    """A Kubernetes event about an object of the service (a pod, the deployment)."""

    type: str | None  # Normal | Warning
    reason: str | None
    object: str | None  # the involved object's name
    message: str | None
    count: int
    last_seen: str | None  # lastTimestamp, as Kubernetes gives it

    def describe(self) -> str:
        return f"event {self.type} {self.reason} on {self.object}: {self.message} (x{self.count})"


@dataclass(frozen=True)
class NodeSummary:
    name: str
    ready: str  # the Ready condition's status: True, False or Unknown (the kubelet stopped reporting)
    pressures: tuple[str, ...]  # MemoryPressure, DiskPressure, PIDPressure conditions that are True
    unschedulable: bool  # cordoned, or tainted NoSchedule: no new pod is placed there
    reason: str = ""


@dataclass(frozen=True)
class Revision:
    revision: int
    replicaset: str
    image: str
    created: str
    replicas: int


@dataclass(frozen=True)
class UndoResult:
    from_revision: int
    to_revision: int
    image: str
    skipped: bool


def summarize_pod(pod: dict[str, Any]) -> PodSummary:
    status = pod.get("status") or {}
    cs = (status.get("containerStatuses") or [{}])[0]
    terminated = (cs.get("lastState") or {}).get("terminated") or {}
    # the pod's Ready condition decides (a pod on an unreachable node keeps its containers' last
    # reported state, ready included, while the node controller marks the pod not Ready)
    condition = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return PodSummary(
        name=pod["metadata"]["name"],
        phase=status.get("phase", "Unknown"),
        ready=condition.get("status") == "True" if condition else bool(cs.get("ready")),
        restarts=int(cs.get("restartCount") or 0),
        waiting_reason=((cs.get("state") or {}).get("waiting") or {}).get("reason"),
        last_termination_reason=terminated.get("reason"),
        last_exit_code=terminated.get("exitCode"),
        image=cs.get("image") or (pod.get("spec", {}).get("containers") or [{}])[0].get("image", ""),
        node=(pod.get("spec") or {}).get("nodeName"),
    )


def summarize_node(node: dict[str, Any]) -> NodeSummary:
    conditions = {c.get("type"): c for c in (node.get("status") or {}).get("conditions") or []}
    ready = conditions.get("Ready") or {}
    spec = node.get("spec") or {}
    return NodeSummary(
        name=node["metadata"]["name"],
        ready=ready.get("status", "Unknown"),
        pressures=tuple(kind for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
                        if (conditions.get(kind) or {}).get("status") == "True"),
        unschedulable=bool(spec.get("unschedulable"))
        or any(t.get("effect") == "NoSchedule" for t in spec.get("taints") or []),
        reason=ready.get("reason") or "",
    )


# -- in-cluster credentials ---------------------------------------------------------------------
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


@dataclass(frozen=True)
class InCluster:
    """A pod's own credentials: the ServiceAccount token, the cluster's CA and the pod's
    namespace, which the kubelet projects into `directory`, and the API server's address in
    KUBERNETES_SERVICE_HOST / KUBERNETES_SERVICE_PORT."""

    directory: str = SERVICE_ACCOUNT_DIR
    environ: Mapping[str, str] | None = None  # None: the process's environment

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self.environ is None else self.environ

    @property
    def applies(self) -> bool:
        return bool(self.env.get("KUBERNETES_SERVICE_HOST"))

    def namespace(self) -> str | None:
        try:
            return Path(self.directory, "namespace").read_text().strip() or None
        except OSError:
            return None

    def api_client(self) -> k8s.ApiClient:
        """A client that reads the token file again whenever the kubelet has rotated it (the
        projected token expires within the hour; the file is replaced before it does)."""
        token_file = Path(self.directory, "token")
        configuration = k8s.Configuration()
        try:
            k8s_config.incluster_config.InClusterConfigLoader(
                token_filename=str(token_file), cert_filename=str(Path(self.directory, "ca.crt")),
                try_refresh_token=False, environ=self.env).load_and_set(configuration)
        except k8s_config.ConfigException as exc:
            raise IntegrationError("Kubernetes in-cluster config", f"{exc} (in {self.directory}, "
                                   "KUBERNETES_SERVICE_HOST/PORT)") from exc
        configuration.refresh_api_key_hook = cast(Any, _TokenFile(token_file))  # typed None in the client
        return k8s.ApiClient(configuration)


class _TokenFile:
    """The Configuration's refresh hook: the token as the file holds it now, read again only when
    the file changed (a stat per request)."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple[float, int] | None = None

    def __call__(self, configuration: k8s.Configuration) -> None:
        try:
            stat = self.path.stat()
        except OSError:
            return  # keep the token held; the API server says if it has expired
        if (stat.st_mtime, stat.st_ino) != self._seen:
            token = self.path.read_text().strip()
            if token:
                configuration.api_key["BearerToken"] = f"Bearer {token}"
                self._seen = (stat.st_mtime, stat.st_ino)


# -- the client --------------------------------------------------------------------------------
class KubernetesClient(Closing, SecurityObjects, ConfigObjects, ResourceUsage):
    """The operations a runbook needs, each with a timeout and retries on transient failures.

    Credentials: a kubeconfig file (and context); with no kubeconfig inside a pod
    (KUBERNETES_SERVICE_HOST set), the pod's ServiceAccount (`InCluster`); otherwise
    ~/.kube/config, as kubectl does."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, *, host: str | None = None,
                 token: str | None = None, timeout: float = 10.0, retry: RetryPolicy = RetryPolicy(attempts=3),
                 in_cluster: InCluster | None = None):
        in_cluster = in_cluster or InCluster()
        if host:
            configuration = k8s.Configuration(host=host)
            if token:
                configuration.api_key = {"authorization": f"Bearer {token}"}
            api_client = k8s.ApiClient(configuration)
        elif kubeconfig is None and in_cluster.applies:
            api_client = in_cluster.api_client()
        else:
            try:
                api_client = k8s_config.new_client_from_config(config_file=kubeconfig, context=context)
            except Exception as exc:  # the loader raises several unrelated types for a bad file
                raise IntegrationError(f"Kubernetes config {kubeconfig or '~/.kube/config'}", str(exc)) from exc
        api_client.configuration.retries = False
        self.api_client = api_client
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.timeout = timeout
        self.retry = retry

    def close(self) -> None:
        self.api_client.close()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        last, timed_out = "", False
        for attempt in range(1, self.retry.attempts + 1):
            try:
                return fn(*args, _request_timeout=self.timeout, **kwargs)
            except ApiException as exc:
                reason = _api_reason(exc)
                if not is_transient(exc.status or 0):
                    raise refusal(f"Kubernetes {what}", reason, exc.status) from None
                last, retry_after = reason, (exc.headers or {}).get("Retry-After")
                status = exc.status
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                last, retry_after, status = f"{type(exc).__name__}: {exc}", None, None
                timed_out = isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError))
            if attempt < self.retry.attempts:
                time.sleep(self.retry.pause(attempt, retry_after))
        raise gave_up(f"Kubernetes {what}", f"{last} (after {self.retry.attempts} attempts)", status,
                      timed_out=timed_out)

    def _json(self, obj: Any) -> dict[str, Any]:
        return cast(dict[str, Any], self.api_client.sanitize_for_serialization(obj))

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """The Deployment as the API serialises it (for the rollout and undo rules, and faults)."""
        return self._json(self._call(f"get deployment {namespace}/{name}",
                                     self.apps.read_namespaced_deployment, name, namespace))

    def deployment(self, namespace: str, name: str) -> DeploymentView:
        """What the runbooks read of a Deployment, from one read: replicas, revision, containers,
        template metadata, selector, and kubectl's rollout verdict."""
        return deployment_view(self.get_deployment(namespace, name))

    def rollout_status(self, namespace: str, name: str) -> RolloutStatus:
        return rollout_status_of(self.get_deployment(namespace, name))

    def _replicasets(self, deployment: dict[str, Any]) -> list[dict[str, Any]]:
        meta = deployment["metadata"]
        selector = selector_of(deployment)
        found = self._call(f"list replicasets of {meta['namespace']}/{meta['name']}",
                           self.apps.list_namespaced_replica_set, meta["namespace"], label_selector=selector)
        return owned_replicasets(deployment, [self._json(rs) for rs in found.items])

    def revision_history(self, namespace: str, name: str) -> list[Revision]:
        """ReplicaSet revisions of a deployment, newest first (kubectl rollout history)."""
        history = [Revision(revision_of(rs), rs["metadata"]["name"], container_image({"spec": rs["spec"]}),
                            rs["metadata"].get("creationTimestamp", ""), rs["spec"].get("replicas", 0))
                   for rs in self._replicasets(self.get_deployment(namespace, name))]
        return sorted(history, key=lambda r: r.revision, reverse=True)

    def pods(self, namespace: str, deployment: str) -> list[PodSummary]:
        dep = self.get_deployment(namespace, deployment)
        selector = selector_of(dep)
        found = self._call(f"list pods of {namespace}/{deployment}", self.core.list_namespaced_pod, namespace,
                           label_selector=selector)
        return [summarize_pod(self._json(p)) for p in found.items]

    def nodes(self) -> list[NodeSummary]:
        """Every node's conditions (needs `list nodes`, a cluster-wide read)."""
        return [summarize_node(self._json(n)) for n in self._call("list nodes", self.core.list_node).items]

    def events(self, namespace: str, names: set[str] | None = None, limit: int = 20) -> list[EventSummary]:
        """The newest events in the namespace (about `names` only, when given)."""
        found = self._call(f"list events in {namespace}", self.core.list_namespaced_event, namespace)
        events = [self._json(e) for e in found.items]
        if names:
            events = [e for e in events if e["involvedObject"].get("name") in names]
        events.sort(key=lambda e: e.get("lastTimestamp") or "", reverse=True)
        return [EventSummary(type=e.get("type"), reason=e.get("reason"), object=e["involvedObject"].get("name"),
                             message=e.get("message"), count=int(e.get("count") or 1), last_seen=e.get("lastTimestamp"))
                for e in events[:limit]]

    def pod_logs(self, namespace: str, pod: str, container: str | None = None, tail_lines: int = 50,
                 previous: bool = False) -> str:
        kwargs: dict[str, Any] = {"tail_lines": tail_lines, "previous": previous}
        if container:
            kwargs["container"] = container
        return str(self._call(f"logs of pod {namespace}/{pod}", self.core.read_namespaced_pod_log, pod, namespace,
                              **kwargs))

    def scale(self, namespace: str, name: str, replicas: int) -> tuple[int, int]:
        """kubectl scale; returns (before, after)."""
        if not isinstance(replicas, int) or replicas < 0:
            raise ValueError(f"replicas must be a non-negative integer, got {replicas!r}")
        scale = self._call(
            f"get scale of {namespace}/{name}", self.apps.read_namespaced_deployment_scale, name, namespace
        )
        before = scale.spec.replicas
        self._call(f"scale {namespace}/{name} to {replicas}", self.apps.patch_namespaced_deployment_scale, name,
                   namespace, {"spec": {"replicas": replicas}})
        return before, replicas

    def rollout_restart(self, namespace: str, name: str, at: datetime | None = None) -> str:
        """kubectl rollout restart: stamp the pod template so every pod is replaced."""
        stamp = (at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
        self._call(f"rollout restart {namespace}/{name}", self.apps.patch_namespaced_deployment, name, namespace, body)
        return stamp

    def rollout_undo(self, namespace: str, name: str, to_revision: int = 0) -> UndoResult:
        """kubectl rollout undo (to the previous revision, or to `to_revision`)."""
        dep = self.get_deployment(namespace, name)
        try:
            plan = plan_undo(dep, self._replicasets(dep), to_revision)
        except ValueError as exc:
            raise IntegrationError(f"Kubernetes rollout undo {namespace}/{name}", str(exc)) from None
        if plan.patch is not None:
            self._call(f"rollout undo {namespace}/{name}", self.apps.patch_namespaced_deployment, name, namespace,
                       plan.patch, _content_type="application/json-patch+json")
        return UndoResult(plan.from_revision, plan.to_revision, plan.image, skipped=plan.patch is None)

    def autoscaler_of(self, namespace: str, deployment: str) -> AutoscalerView | None:
        """The HorizontalPodAutoscaler that scales this deployment, if any."""
        found = self._call(f"list horizontalpodautoscalers in {namespace}",
                           k8s.AutoscalingV2Api(self.api_client).list_namespaced_horizontal_pod_autoscaler, namespace)
        for hpa in found.items:
            ref = hpa.spec.scale_target_ref
            if ref.kind == "Deployment" and ref.name == deployment:
                return AutoscalerView(hpa.metadata.name, hpa.spec.min_replicas or 1, hpa.spec.max_replicas)
        return None

    def set_autoscaler_bounds(self, namespace: str, name: str, minimum: int, maximum: int) -> None:
        self._call(f"patch horizontalpodautoscaler {namespace}/{name}",
                   k8s.AutoscalingV2Api(self.api_client).patch_namespaced_horizontal_pod_autoscaler, name, namespace,
                   {"spec": {"minReplicas": minimum, "maxReplicas": maximum}})

    def can_i(self, verb: str, group: str, resource: str, namespace: str, name: str = "",
              subresource: str = "") -> bool:
        """What `kubectl auth can-i` asks: a SelfSubjectAccessReview, which every authenticated
        identity may create."""
        review = k8s.V1SelfSubjectAccessReview(spec=k8s.V1SelfSubjectAccessReviewSpec(
            resource_attributes=k8s.V1ResourceAttributes(verb=verb, group=group, resource=resource,
                                                         subresource=subresource or None, namespace=namespace,
                                                         name=name or None)))
        answer = self._call(f"access review ({verb} {resource} in {namespace})",
                            k8s.AuthorizationV1Api(self.api_client).create_self_subject_access_review, review)
        return bool(answer.status and answer.status.allowed)

    def set_image(self, namespace: str, name: str, container: str, image: str) -> None:
        body = {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}}
        self._call(f"set image {namespace}/{name}", self.apps.patch_namespaced_deployment, name, namespace, body)


def _api_reason(exc: ApiException) -> str:
    try:
        return f"HTTP {exc.status}: {json.loads(exc.body or '').get('message')}"
    except (TypeError, ValueError, AttributeError):
        return f"HTTP {exc.status}: {exc.reason}"
