"""The ConfigMaps and Secrets a deployment's pods use, and when each last changed.

A ConfigMap or Secret changed and rolled out by a restart (no new image) breaks a service as
surely as a release, and a rollback of the deployment does not undo it. The change time is the
newest `metadata.managedFields[].time` (the API server stamps it on every write that changes
the object), else its creationTimestamp. A Secret's data is read by the API call but never kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from integrations.errors import IntegrationError
from integrations.kubernetes_api import ApiAccess

CONFIGMAP, SECRET = "configmap", "secret"


@dataclass(frozen=True, order=True)
class ConfigRef:
    kind: str  # configmap | secret
    name: str


@dataclass(frozen=True)
class ConfigObject:
    kind: str
    name: str
    changed_at: datetime | None  # None: it could not be read (error says why)
    error: str | None = None

    def describe(self) -> str:
        return f"{self.kind}/{self.name}"


def _from_container(container: dict[str, Any]) -> set[ConfigRef]:
    refs = set()
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            refs.add(ConfigRef(CONFIGMAP, source["configMapRef"]["name"]))
        if "secretRef" in source:
            refs.add(ConfigRef(SECRET, source["secretRef"]["name"]))
    for env in container.get("env") or []:
        value_from = env.get("valueFrom") or {}
        if "configMapKeyRef" in value_from:
            refs.add(ConfigRef(CONFIGMAP, value_from["configMapKeyRef"]["name"]))
        if "secretKeyRef" in value_from:
            refs.add(ConfigRef(SECRET, value_from["secretKeyRef"]["name"]))
    return refs


def _from_volume(volume: dict[str, Any]) -> set[ConfigRef]:
    sources = [volume, *((volume.get("projected") or {}).get("sources") or [])]
    refs = {ConfigRef(CONFIGMAP, s["configMap"]["name"]) for s in sources if "configMap" in s}
    refs |= {ConfigRef(SECRET, s["secret"].get("secretName") or s["secret"].get("name", ""))
             for s in sources if "secret" in s}
    return refs


def config_refs(deployment: dict[str, Any]) -> list[ConfigRef]:
    """Every ConfigMap and Secret the pod template reads: envFrom, env valueFrom, volumes
    (projected ones too), in every container and init container."""
    spec = deployment["spec"]["template"]["spec"]
    refs: set[ConfigRef] = set()
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        refs |= _from_container(container)
    for volume in spec.get("volumes") or []:
        refs |= _from_volume(volume)
    return sorted(r for r in refs if r.name)


def _parse(stamp: str | None) -> datetime | None:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


def volume_claims(deployment: dict[str, Any]) -> list[str]:
    """The PersistentVolumeClaims the pod template mounts."""
    volumes = deployment["spec"]["template"]["spec"].get("volumes") or []
    return sorted({v["persistentVolumeClaim"]["claimName"] for v in volumes
                   if (v.get("persistentVolumeClaim") or {}).get("claimName")})


class ConfigObjects(ApiAccess):
    """KubernetesClient's reads of the ConfigMaps and Secrets a deployment uses (mixed into it)."""

    def last_changed(self, namespace: str, ref: ConfigRef) -> ConfigObject:
        """When `ref` last changed; an object that cannot be read (missing, forbidden) says why."""
        read = self.core.read_namespaced_config_map if ref.kind == CONFIGMAP else self.core.read_namespaced_secret
        try:
            obj = self._json(self._call(f"read {ref.kind} {namespace}/{ref.name}", read, ref.name, namespace))
            meta = obj["metadata"]
        except IntegrationError as exc:
            return ConfigObject(ref.kind, ref.name, None, str(exc))
        times = [t for t in (_parse(f.get("time")) for f in meta.get("managedFields") or []) if t is not None]
        return ConfigObject(ref.kind, ref.name, max(times, default=None) or _parse(meta.get("creationTimestamp")))

    def deployment_config_refs(self, namespace: str, name: str) -> list[ConfigRef]:
        """Every ConfigMap and Secret the Deployment's pod template reads (one read of it)."""
        return config_refs(self.get_deployment(namespace, name))

    def deployment_volume_claims(self, namespace: str, name: str) -> list[str]:
        """The PersistentVolumeClaims the Deployment's pod template mounts (one read of it)."""
        return volume_claims(self.get_deployment(namespace, name))
