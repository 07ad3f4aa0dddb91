"""What a deployment's pods use against what they request and may use: the resource metrics API
(`metrics.k8s.io/v1beta1` PodMetrics, served by metrics-server; what `kubectl top pods` reads)
and the container's `resources` in the deployment.

Quantities follow Kubernetes' notation: CPU in cores (`2`), millicores (`250m`), micro- or
nanocores (`250000u`, `250000000n`); memory in bytes with binary (`Ki`, `Mi`, `Gi`, …) or decimal
(`k`, `M`, `G`, …) suffixes, an exponent (`129e6`), or in millibytes (`128974848000m`, as the API
server may canonicalise a fractional value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from incidents.errors import RunbookError
from integrations.kubernetes_api import ApiAccess
from integrations.kubernetes_views import deployment_view

_CPU = {"n": 1e-6, "u": 1e-3, "m": 1.0}
_MEMORY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
           "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}


class BadQuantity(RunbookError, ValueError):
    pass


def millicores(quantity: str) -> float:
    """'250m' -> 250.0; '2' -> 2000.0; '250000000n' -> 250.0."""
    text = str(quantity).strip()
    try:
        if text and text[-1] in _CPU:
            return float(text[:-1]) * _CPU[text[-1]]
        return float(text) * 1000
    except ValueError:
        raise BadQuantity(f"not a CPU quantity: {quantity!r}") from None


def mebibytes(quantity: str) -> float:
    """'256Mi' -> 256.0; '262144Ki' -> 256.0; '1G' -> 953.67..."""
    text = str(quantity).strip()
    try:
        for suffix in sorted(_MEMORY, key=len, reverse=True):
            if text.endswith(suffix):
                return float(text[: -len(suffix)]) * _MEMORY[suffix] / 2**20
        return float(text) / 2**20
    except ValueError:
        raise BadQuantity(f"not a memory quantity: {quantity!r}") from None


@dataclass(frozen=True)
class Resources:
    """A container's requests and limits (None: not set)."""
    cpu_request_m: float | None = None
    cpu_limit_m: float | None = None
    memory_request_mi: float | None = None
    memory_limit_mi: float | None = None


@dataclass(frozen=True)
class PodUsage:
    pod: str
    cpu_m: float
    memory_mi: float


def container_resources(deployment: dict[str, Any], container: str | None = None) -> Resources:
    containers = deployment["spec"]["template"]["spec"].get("containers") or [{}]
    chosen = next((c for c in containers if c.get("name") == container), containers[0])
    res = chosen.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}

    def read(found: dict[str, Any], key: str, parse: Any) -> float | None:
        return parse(found[key]) if key in found else None

    return Resources(read(requests, "cpu", millicores), read(limits, "cpu", millicores),
                     read(requests, "memory", mebibytes), read(limits, "memory", mebibytes))


class ResourceUsage(ApiAccess):
    """KubernetesClient's reads of what a deployment's pods use (mixed into it)."""

    def pod_usage(self, namespace: str, selector: str, container: str | None = None) -> list[PodUsage]:
        """The newest sample of each pod that has one (a pod on an unreachable node, or not running,
        has none). Raises IntegrationError: 404 when no metrics API is served (no metrics-server)."""
        api = k8s.CustomObjectsApi(self.api_client)
        found = self._call(f"list pod metrics in {namespace}", api.list_namespaced_custom_object, "metrics.k8s.io",
                           "v1beta1", namespace, "pods", label_selector=selector)
        usages = []
        for item in found.get("items") or []:
            containers = item.get("containers") or []
            chosen = [c for c in containers if container is None or c.get("name") == container] or containers
            usage = [c.get("usage") or {} for c in chosen]
            usages.append(PodUsage(item["metadata"]["name"], sum(millicores(u.get("cpu", "0")) for u in usage),
                                   sum(mebibytes(u.get("memory", "0")) for u in usage)))
        return usages

    def deployment_usage(self, namespace: str, name: str,
                         container: str | None = None) -> tuple[Resources, list[PodUsage]]:
        """The container's requests and limits in the Deployment's template, and its pods' newest
        samples (pod_usage: IntegrationError 404 when no metrics API is served)."""
        deployment = self.get_deployment(namespace, name)
        selector = deployment_view(deployment).selector
        return container_resources(deployment, container), self.pod_usage(namespace, selector, container)
