"""What the operations mixed into KubernetesClient (integrations/kubernetes.py) use of it: its
API connection, timeout, retried calls and the deployment read. Declared here so that each
group of operations can live in a module of its own and still be one client to its callers."""

from __future__ import annotations

from typing import Any, Callable

from kubernetes import client as k8s


class ApiAccess:
    """KubernetesClient defines each of these; a mixin reaches the API only through them."""

    api_client: k8s.ApiClient
    core: k8s.CoreV1Api
    timeout: float

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError  # pragma: no cover - KubernetesClient's

    def _json(self, obj: Any) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - KubernetesClient's

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover - KubernetesClient's
