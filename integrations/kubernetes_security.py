"""Containment operations on Kubernetes objects: secret metadata and rotation, ConfigMap
switches, and a NetworkPolicy that blocks addresses. Secret values are generated here, sent
to the API, and never returned, logged or put in an error."""

from __future__ import annotations

import base64
import secrets as random_secrets
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s

from integrations.errors import IntegrationError, NotFound, refusal
from integrations.kubernetes_api import ApiAccess


@dataclass(frozen=True)
class SecretMetadata:
    name: str
    keys: tuple[str, ...]
    type: str
    resource_version: str
    created: str


DENYLIST = "nginx.ingress.kubernetes.io/denylist-source-range"


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector selects pods with `labels` (an expression counts as selecting:
    when unsure, assume the policy applies)."""
    if selector.get("matchExpressions"):
        return True
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def block_peers(blocked: set[str] | list[str]) -> list[dict[str, Any]]:
    """Both address families admitted, each with its own family's exceptions: a peer for one
    family only would cut every client of the other off (an ipBlock admits its family alone)."""
    v4 = sorted(c for c in blocked if ":" not in c)
    v6 = sorted(c for c in blocked if ":" in c)
    return [{"ipBlock": {"cidr": "0.0.0.0/0", "except": v4}}, {"ipBlock": {"cidr": "::/0", "except": v6}}]


class SecurityObjects(ApiAccess):
    """KubernetesClient's containment operations (mixed into it: each uses its API connection, timeout and retries)."""

    def secret_metadata(self, namespace: str, names: list[str]) -> list[SecretMetadata]:
        found = []
        for name in names:
            obj = self._json(
                self._call(f"read secret {namespace}/{name}", self.core.read_namespaced_secret, name, namespace)
            )
            found.append(
                SecretMetadata(
                    name,
                    tuple(sorted((obj.get("data") or {}).keys())),
                    obj.get("type", ""),
                    obj["metadata"].get("resourceVersion", ""),
                    obj["metadata"].get("creationTimestamp", ""),
                )
            )
        return found

    def set_secret_values(self, namespace: str, name: str, values: dict[str, str]) -> str:
        """Write `values` (plain text) into existing keys of a Secret; returns its new resourceVersion.
        The values are neither returned nor put into an error."""
        current = self.secret_metadata(namespace, [name])[0]
        missing = set(values) - set(current.keys)
        if missing:
            raise IntegrationError(f"Kubernetes set secret {namespace}/{name}", f"keys {sorted(missing)} do not exist")
        data = {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}
        try:
            updated = self._call(f"set secret {namespace}/{name}", self.core.patch_namespaced_secret, name, namespace,
                                 {"data": data})
        finally:
            data.clear()
        return str(updated.metadata.resource_version)

    def append_to_secret_value(self, namespace: str, name: str, key: str, suffix: str) -> str:
        """`suffix` added to one value of a Secret (a drill's credential written with `echo`: a
        trailing newline). Returns the value as it was, still base64-encoded, for
        `restore_secret_value`; the caller keeps it in memory only."""
        obj = self._json(self._call(f"read secret {namespace}/{name}", self.core.read_namespaced_secret,
                                    name, namespace))
        encoded = (obj.get("data") or {}).get(key)
        if encoded is None:
            raise IntegrationError(f"Kubernetes set secret {namespace}/{name}", f"key {key!r} does not exist")
        changed = base64.b64encode(base64.b64decode(encoded) + suffix.encode()).decode()
        self._call(f"set secret {namespace}/{name}", self.core.patch_namespaced_secret, name, namespace,
                   {"data": {key: changed}})
        return str(encoded)

    def restore_secret_value(self, namespace: str, name: str, key: str, encoded: str) -> str:
        """One value of a Secret back as `append_to_secret_value` found it; its new resourceVersion."""
        updated = self._call(f"set secret {namespace}/{name}", self.core.patch_namespaced_secret, name, namespace,
                             {"data": {key: encoded}})
        return str(updated.metadata.resource_version)

    def rotate_secret(self, namespace: str, name: str, keys: list[str]) -> str:
        """New random values for `keys`; returns the secret's new resourceVersion."""
        return self.set_secret_values(namespace, name, {key: random_secrets.token_urlsafe(32) for key in keys})

    def get_config_value(self, namespace: str, configmap: str, key: str) -> str | None:
        obj = self._call(
            f"read configmap {namespace}/{configmap}", self.core.read_namespaced_config_map, configmap, namespace
        )
        return (obj.data or {}).get(key)

    def set_config_value(self, namespace: str, configmap: str, key: str, value: str) -> str | None:
        """Set one ConfigMap key; returns the previous value so it can be put back."""
        previous = self.get_config_value(namespace, configmap, key)
        self._call(f"patch configmap {namespace}/{configmap}", self.core.patch_namespaced_config_map,
                   configmap, namespace,
                   {"data": {key: value}})
        return previous

    def remove_network_policy(self, namespace: str, policy: str) -> bool:
        """Delete a NetworkPolicy; False if it was not there."""
        networking = k8s.NetworkingV1Api(self.api_client)
        try:
            self._call(f"delete networkpolicy {namespace}/{policy}", networking.delete_namespaced_network_policy,
                       policy, namespace)
        except NotFound:
            return False
        return True

    def _networking(self) -> k8s.NetworkingV1Api:
        return k8s.NetworkingV1Api(self.api_client)

    def _read_policy(self, namespace: str, policy: str) -> dict[str, Any] | None:
        try:
            return self._json(self._networking().read_namespaced_network_policy(policy, namespace,
                                                                                 _request_timeout=self.timeout))
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise refusal(f"Kubernetes read networkpolicy {namespace}/{policy}", f"HTTP {exc.status}",
                              exc.status) from None
            return None

    def policies_selecting(self, namespace: str, labels: dict[str, str], ignore: str) -> list[str]:
        """NetworkPolicies (other than `ignore`, our own block) that select pods with `labels`."""
        found = self._call(f"list networkpolicies in {namespace}", self._networking().list_namespaced_network_policy,
                           namespace)
        return sorted(p.metadata.name for p in found.items if p.metadata.name != ignore
                      and _selects(self._json(p)["spec"].get("podSelector") or {}, labels))

    def blocked_by_policy(self, namespace: str, policy: str) -> list[str]:
        existing = self._read_policy(namespace, policy)
        rules = (existing or {}).get("spec", {}).get("ingress", [])
        return sorted({c for rule in rules for peer in rule.get("from", [])
                       for c in (peer.get("ipBlock") or {}).get("except", [])})

    def block_cidrs(self, namespace: str, policy: str, app: str, cidrs: list[str]) -> list[str]:
        """Create or extend the NetworkPolicy that admits ingress to `app` from anywhere except
        `cidrs`, and from every pod and namespace of the cluster explicitly (in-cluster traffic is
        matched by selectors, not by address). Returns every address the policy now blocks. Only
        safe when no other policy selects the pods: policies add up, so on pods another policy
        restricts this one would widen what they may receive."""
        return self._write_policy(namespace, policy, app, set(cidrs) | set(self.blocked_by_policy(namespace, policy)))

    def unblock_cidrs(self, namespace: str, policy: str, app: str, cidrs: list[str]) -> list[str]:
        """Take `cidrs` out of the block policy, keeping every other block; the policy is deleted
        when nothing is left. Returns what stays blocked."""
        remaining = set(self.blocked_by_policy(namespace, policy)) - set(cidrs)
        if remaining:
            return self._write_policy(namespace, policy, app, remaining)
        self.remove_network_policy(namespace, policy)
        return []

    def _write_policy(self, namespace: str, policy: str, app: str, blocked: set[str]) -> list[str]:
        existing = self._read_policy(namespace, policy)
        peers = block_peers(blocked) + [{"podSelector": {}}, {"namespaceSelector": {}}]
        body: dict[str, Any] = {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": policy, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "runbooks"}},
            "spec": {
                "podSelector": {"matchLabels": {"app": app}},
                "policyTypes": ["Ingress"],
                "ingress": [{"from": peers}],
            },
        }
        networking = self._networking()
        if existing is None:
            self._call(f"create networkpolicy {namespace}/{policy}", networking.create_namespaced_network_policy,
                       namespace, body)
        else:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            self._call(f"replace networkpolicy {namespace}/{policy}", networking.replace_namespaced_network_policy,
                       policy, namespace, body)
        return sorted(blocked)

    def ingress_denylist(self, namespace: str, ingress: str) -> list[str]:
        """The ranges ingress-nginx denies for this Ingress (its denylist-source-range annotation)."""
        obj = self._json(self._call(f"read ingress {namespace}/{ingress}", self._networking().read_namespaced_ingress,
                                    ingress, namespace))
        value = (obj["metadata"].get("annotations") or {}).get(DENYLIST, "")
        return sorted({c.strip() for c in value.split(",") if c.strip()})

    def set_ingress_denylist(self, namespace: str, ingress: str, cidrs: list[str]) -> list[str]:
        """Write exactly `cidrs` as the Ingress's deny list (the annotation is removed when empty)."""
        value = ",".join(sorted(set(cidrs))) or None
        self._call(f"annotate ingress {namespace}/{ingress}", self._networking().patch_namespaced_ingress, ingress,
                   namespace, {"metadata": {"annotations": {DENYLIST: value}}})
        return sorted(set(cidrs))
