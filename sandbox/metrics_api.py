"""The resource metrics API (`metrics.k8s.io/v1beta1`, what metrics-server serves and `kubectl
top pods` reads) over the sandbox cluster and its demo services.

A pod's CPU follows the requests it serves: at its capacity per replica it uses 250m (2.5x the
100m it requests). Its memory is 96Mi, or, when the service leaks (POST /_sandbox/memory), 250Mi
of its 256Mi limit (the last sample before the kernel kills it). A pod whose node stopped
reporting, or that never ran, has no sample and is left out, as metrics-server leaves it out.
Quantities are written as metrics-server writes them: CPU in nanocores (`n`), memory in `Ki`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sandbox.cluster import Cluster
from sandbox.k8s_objects import now_iso
from sandbox.nodes import reachable

GROUP_VERSION = "metrics.k8s.io/v1beta1"
PATH = f"/apis/{GROUP_VERSION}"
CPU_AT_CAPACITY_M = 250.0
MEMORY_MI, LEAKING_MEMORY_MI = 96, 250

# (namespace, deployment) -> (requests per second served by each ready pod, its capacity per replica)
Load = Callable[[str, str], tuple[float, float] | None]


def resource_list() -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": [
        {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]},
        {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics", "verbs": ["get", "list"]}]}


def parse(path: str) -> tuple[str | None, str | None] | None:
    """(namespace, pod name) of a pods metrics path, or None for any other path."""
    parts = path.removeprefix(PATH).strip("/").split("/")
    if parts[:1] == ["pods"] and len(parts) <= 2:
        return None, parts[1] if len(parts) == 2 else None
    if len(parts) in (3, 4) and parts[0] == "namespaces" and parts[2] == "pods":
        return parts[1], parts[3] if len(parts) == 4 else None
    return None


def pod_metrics(cluster: Cluster, load: Load, namespace: str | None, name: str | None,
                selector: str | None) -> list[dict[str, Any]]:
    with cluster.lock:
        pods = [p for p in cluster.list("pods", namespace, selector) if name in (None, p["metadata"]["name"])]
        return [m for m in (_sample(cluster, load, pod) for pod in pods) if m is not None]


def _sample(cluster: Cluster, load: Load, pod: Mapping[str, Any]) -> dict[str, Any] | None:
    meta, spec = pod["metadata"], pod["spec"]
    node = cluster._objects.get(("nodes", "", spec.get("nodeName") or ""))
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    if not reachable(node) or not statuses:
        return None
    owner = _deployment_of(cluster, meta)
    served = load(meta["namespace"], owner) if owner else None
    cpu_m = 1.0 if served is None or not statuses[0].get("ready") else \
        max(1.0, CPU_AT_CAPACITY_M * served[0] / served[1]) if served[1] else 1.0
    leaking = (meta["namespace"], owner) in cluster.memory_leaks
    memory_mi = LEAKING_MEMORY_MI if leaking else MEMORY_MI
    return {"kind": "PodMetrics", "apiVersion": GROUP_VERSION,
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": meta.get("labels") or {},
                         "creationTimestamp": now_iso()},
            "timestamp": now_iso(), "window": "15s",
            "containers": [{"name": c["name"], "usage": {"cpu": f"{int(cpu_m * 1_000_000)}n",
                                                         "memory": f"{memory_mi * 1024}Ki"}}
                           for c in spec.get("containers") or []]}


def _deployment_of(cluster: Cluster, meta: Mapping[str, Any]) -> str | None:
    owner = next(iter(meta.get("ownerReferences") or []), None)
    if owner is None:
        return None
    rs = cluster._objects.get(("replicasets", meta["namespace"], owner["name"]))
    return next((o["name"] for o in (rs or {}).get("metadata", {}).get("ownerReferences") or []), None)
