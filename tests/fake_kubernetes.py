"""An in-memory Kubernetes for the unit tier, implementing integrations/kubernetes_protocol.py's
`Kubernetes` (mypy holds it to the protocol wherever FakeWiring hands it out).

It keeps objects as the API would and follows kubectl's rules where the runbooks rely on them:
an undo goes to the previous revision and is refused on a paused deployment, a set image or a
restart makes a new revision, a NetworkPolicy is deleted when it blocks nothing, an object that
is not there raises the client's own NotFound. Secret values are kept base64-encoded, as the API
keeps them, and never handed out."""

from __future__ import annotations

import base64
import copy
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from integrations.errors import IntegrationError, refusal
from integrations.kubernetes import RESTARTED_AT, EventSummary, NodeSummary, PodSummary, Revision, UndoResult
from integrations.kubernetes_config import ConfigObject, ConfigRef
from integrations.kubernetes_security import SecretMetadata
from integrations.kubernetes_usage import PodUsage, Resources
from integrations.kubernetes_views import (
    REVISION,
    AutoscalerView,
    DeploymentView,
    RolloutStatus,
    deployment_view,
    rollout_status_of,
)

Key = tuple[str, str]  # (namespace, name)


def deployment(revision: int, image: str, replicas: int = 3, paused: bool = False) -> dict[str, Any]:
    """A Deployment object as the API returns it, with the revision annotation kubectl reads."""
    return {"metadata": {"annotations": {REVISION: str(revision)}, "generation": 1},
            "spec": {"replicas": replicas, "paused": paused,
                     "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
            "status": {"observedGeneration": 1}}


def _missing(what: str) -> IntegrationError:
    return refusal(f"Kubernetes {what}", "HTTP 404: not found", 404)


@dataclass
class Policy:
    """A NetworkPolicy: the pods it selects, and the addresses it blocks (ours) or none (another's)."""

    selects: dict[str, str]
    blocked: set[str] = field(default_factory=set)


class FakeKubernetes:
    """Deployments and what runs them, ConfigMaps, Secrets, NetworkPolicies and Ingress deny
    lists, by (namespace, name); `calls` lists every change, in order."""

    def __init__(self) -> None:
        self.deployments: dict[Key, dict[str, Any]] = {}
        self.history: dict[Key, list[Revision]] = {}  # a deployment's ReplicaSet revisions, any order
        self.autoscalers: dict[Key, AutoscalerView] = {}  # by the deployment they scale
        self.pods_of: dict[Key, list[PodSummary]] = {}  # by deployment
        self.logs: dict[Key, str] = {}  # by pod
        self.node_list: list[NodeSummary] = []
        self.event_list: dict[str, list[EventSummary]] = {}  # by namespace, newest first
        self.config_refs: dict[Key, list[ConfigRef]] = {}  # by deployment
        self.changed_at: dict[tuple[str, ConfigRef], datetime] = {}
        self.claims: dict[Key, list[str]] = {}  # by deployment
        self.usage: dict[Key, tuple[Resources, list[PodUsage]]] = {}  # by deployment; none: no metrics API
        self.configmaps: dict[Key, dict[str, str]] = {}
        self.secrets: dict[Key, dict[str, str]] = {}  # values base64-encoded, as the API keeps them
        self.versions: dict[Key, int] = {}  # each Secret's resourceVersion
        self.policies: dict[Key, Policy] = {}
        self.denylists: dict[Key, set[str]] = {}  # by Ingress
        self.calls: list[str] = []
        self.refused: set[tuple[str, str]] = set()  # (verb, resource[/subresource]) the Role does not grant

    def __enter__(self) -> FakeKubernetes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    # -- a deployment and what runs it -------------------------------------------------------------
    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(f"get deployment {namespace}/{name}")
        if (namespace, name) not in self.deployments:
            raise _missing(f"read deployment {namespace}/{name}")
        return copy.deepcopy(self.deployments[namespace, name])

    def deployment(self, namespace: str, name: str) -> DeploymentView:
        return deployment_view(self.get_deployment(namespace, name))

    def rollout_status(self, namespace: str, name: str) -> RolloutStatus:
        return rollout_status_of(self.get_deployment(namespace, name))

    def revision_history(self, namespace: str, name: str) -> list[Revision]:
        view = self.deployment(namespace, name)
        known = self.history.get((namespace, name)) or [
            Revision(view.revision, f"{name}-{view.revision}", view.container(None).image, "", view.replicas)]
        return sorted(known, key=lambda r: r.revision, reverse=True)

    def pods(self, namespace: str, deployment: str) -> list[PodSummary]:
        self.deployment(namespace, deployment)
        return list(self.pods_of.get((namespace, deployment), []))

    def nodes(self) -> list[NodeSummary]:
        return list(self.node_list)

    def events(self, namespace: str, names: set[str] | None = None, limit: int = 20) -> list[EventSummary]:
        found = [e for e in self.event_list.get(namespace, []) if not names or e.object in names]
        return found[:limit]

    def pod_logs(self, namespace: str, pod: str, container: str | None = None, tail_lines: int = 50,
                 previous: bool = False) -> str:
        if (namespace, pod) not in self.logs:
            raise _missing(f"logs of pod {namespace}/{pod}")
        return "\n".join(self.logs[namespace, pod].splitlines()[-tail_lines:])

    def autoscaler_of(self, namespace: str, deployment: str) -> AutoscalerView | None:
        return self.autoscalers.get((namespace, deployment))

    def deployment_config_refs(self, namespace: str, name: str) -> list[ConfigRef]:
        self.deployment(namespace, name)
        return sorted(self.config_refs.get((namespace, name), []))

    def last_changed(self, namespace: str, ref: ConfigRef) -> ConfigObject:
        if (namespace, ref) not in self.changed_at:
            return ConfigObject(ref.kind, ref.name, None, str(_missing(f"read {ref.kind} {namespace}/{ref.name}")))
        return ConfigObject(ref.kind, ref.name, self.changed_at[namespace, ref])

    def deployment_volume_claims(self, namespace: str, name: str) -> list[str]:
        self.deployment(namespace, name)
        return sorted(self.claims.get((namespace, name), []))

    def deployment_usage(self, namespace: str, name: str,
                         container: str | None = None) -> tuple[Resources, list[PodUsage]]:
        self.deployment(namespace, name)
        if (namespace, name) not in self.usage:
            raise _missing(f"list pod metrics in {namespace}")  # no metrics-server
        return self.usage[namespace, name]

    def can_i(self, verb: str, group: str, resource: str, namespace: str, name: str = "",
              subresource: str = "") -> bool:
        return (verb, resource + (f"/{subresource}" if subresource else "")) not in self.refused

    # -- remedies ------------------------------------------------------------------------------------
    def scale(self, namespace: str, name: str, replicas: int) -> tuple[int, int]:
        self.calls.append(f"scale {namespace}/{name} {replicas}")
        spec = self._stored(namespace, name)["spec"]
        before, spec["replicas"] = spec["replicas"], replicas
        return before, replicas

    def rollout_restart(self, namespace: str, name: str, at: datetime | None = None) -> str:
        stamp = (at or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.calls.append(f"restart {namespace}/{name}")
        template = self._stored(namespace, name)["spec"]["template"]
        template.setdefault("metadata", {}).setdefault("annotations", {})[RESTARTED_AT] = stamp
        self._new_revision(namespace, name)
        return stamp

    def rollout_undo(self, namespace: str, name: str, to_revision: int = 0) -> UndoResult:
        view = self.deployment(namespace, name)
        what = f"Kubernetes rollout undo {namespace}/{name}"
        if view.paused:
            raise IntegrationError(what, f"you cannot rollback a paused deployment {name!r}; resume it first")
        older = [r for r in self.revision_history(namespace, name) if r.revision != view.revision]
        target = next((r for r in older if r.revision == to_revision), None) if to_revision else \
            (older[0] if older else None)
        if target is None:
            raise IntegrationError(what, f"unable to find revision {to_revision or 'before'} "
                                         f"{view.revision} in history of deployment {name!r}")
        self.calls.append(f"undo {namespace}/{name} to {target.revision}")
        if target.image == view.container(None).image:
            return UndoResult(view.revision, target.revision, target.image, skipped=True)
        self._containers(namespace, name)[0]["image"] = target.image
        self._new_revision(namespace, name)
        return UndoResult(view.revision, target.revision, target.image, skipped=False)

    def set_autoscaler_bounds(self, namespace: str, name: str, minimum: int, maximum: int) -> None:
        self.calls.append(f"bounds {namespace}/{name} {minimum}-{maximum}")
        scaled = next((k for k, hpa in self.autoscalers.items() if k[0] == namespace and hpa.name == name), None)
        if scaled is None:
            raise _missing(f"patch horizontalpodautoscaler {namespace}/{name}")
        self.autoscalers[scaled] = AutoscalerView(name, minimum, maximum)

    def set_image(self, namespace: str, name: str, container: str, image: str) -> None:
        self.calls.append(f"set image {namespace}/{name} {container}={image}")
        containers = self._containers(namespace, name)
        chosen = next((c for c in containers if c["name"] == container), None)
        if chosen is None:
            raise IntegrationError(f"Kubernetes set image {namespace}/{name}", f"no container {container!r}")
        chosen["image"] = image
        self._new_revision(namespace, name)

    def _stored(self, namespace: str, name: str) -> dict[str, Any]:
        if (namespace, name) not in self.deployments:
            raise _missing(f"read deployment {namespace}/{name}")
        return self.deployments[namespace, name]

    def _containers(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return self._stored(namespace, name)["spec"]["template"]["spec"]["containers"]

    def _new_revision(self, namespace: str, name: str) -> None:
        """A changed template is a new ReplicaSet revision, numbered after the newest."""
        history = self.revision_history(namespace, name)
        obj = self._stored(namespace, name)
        revision = max(r.revision for r in history) + 1
        image = obj["spec"]["template"]["spec"]["containers"][0]["image"]
        self.history[namespace, name] = [*history, Revision(revision, f"{name}-{revision}", image, "",
                                                            obj["spec"]["replicas"])]
        obj["metadata"]["annotations"][REVISION] = str(revision)

    # -- ConfigMap switches and Secrets ------------------------------------------------------------
    def get_config_value(self, namespace: str, configmap: str, key: str) -> str | None:
        if (namespace, configmap) not in self.configmaps:
            raise _missing(f"read configmap {namespace}/{configmap}")
        return self.configmaps[namespace, configmap].get(key)

    def set_config_value(self, namespace: str, configmap: str, key: str, value: str) -> str | None:
        previous = self.get_config_value(namespace, configmap, key)
        self.calls.append(f"set configmap {namespace}/{configmap} {key}={value}")
        self.configmaps[namespace, configmap][key] = value
        return previous

    def secret_metadata(self, namespace: str, names: list[str]) -> list[SecretMetadata]:
        return [SecretMetadata(name, tuple(sorted(self._secret(namespace, name))), "Opaque",
                               str(self.versions.get((namespace, name), 1)), "2026-01-01T00:00:00Z")
                for name in names]

    def set_secret_values(self, namespace: str, name: str, values: dict[str, str]) -> str:
        data = self._secret(namespace, name)
        missing = set(values) - set(data)
        if missing:
            raise IntegrationError(f"Kubernetes set secret {namespace}/{name}", f"keys {sorted(missing)} do not exist")
        data.update({key: base64.b64encode(value.encode()).decode() for key, value in values.items()})
        return self._written(namespace, name, sorted(values))

    def rotate_secret(self, namespace: str, name: str, keys: list[str]) -> str:
        return self.set_secret_values(namespace, name, {key: secrets.token_urlsafe(32) for key in keys})

    def append_to_secret_value(self, namespace: str, name: str, key: str, suffix: str) -> str:
        data = self._secret(namespace, name)
        if key not in data:
            raise IntegrationError(f"Kubernetes set secret {namespace}/{name}", f"key {key!r} does not exist")
        encoded = data[key]
        data[key] = base64.b64encode(base64.b64decode(encoded) + suffix.encode()).decode()
        self._written(namespace, name, [key])
        return encoded

    def restore_secret_value(self, namespace: str, name: str, key: str, encoded: str) -> str:
        self._secret(namespace, name)[key] = encoded
        return self._written(namespace, name, [key])

    def _secret(self, namespace: str, name: str) -> dict[str, str]:
        if (namespace, name) not in self.secrets:
            raise _missing(f"read secret {namespace}/{name}")
        return self.secrets[namespace, name]

    def _written(self, namespace: str, name: str, keys: list[str]) -> str:
        self.calls.append(f"set secret {namespace}/{name} {','.join(keys)}")  # the keys, never a value
        self.versions[namespace, name] = self.versions.get((namespace, name), 1) + 1
        return str(self.versions[namespace, name])

    # -- blocking addresses --------------------------------------------------------------------------
    def policies_selecting(self, namespace: str, labels: dict[str, str], ignore: str) -> list[str]:
        return sorted(name for (ns, name), policy in self.policies.items() if ns == namespace and name != ignore
                      and all(labels.get(k) == v for k, v in policy.selects.items()))

    def blocked_by_policy(self, namespace: str, policy: str) -> list[str]:
        found = self.policies.get((namespace, policy))
        return sorted(found.blocked) if found else []

    def block_cidrs(self, namespace: str, policy: str, app: str, cidrs: list[str]) -> list[str]:
        found = self.policies.setdefault((namespace, policy), Policy({"app": app}))
        found.blocked |= set(cidrs)
        self.calls.append(f"block {namespace}/{policy} {','.join(sorted(cidrs))}")
        return sorted(found.blocked)

    def unblock_cidrs(self, namespace: str, policy: str, app: str, cidrs: list[str]) -> list[str]:
        remaining = set(self.blocked_by_policy(namespace, policy)) - set(cidrs)
        self.calls.append(f"unblock {namespace}/{policy} {','.join(sorted(cidrs))}")
        if remaining:
            self.policies[namespace, policy] = Policy({"app": app}, remaining)
        else:
            self.policies.pop((namespace, policy), None)
        return sorted(remaining)

    def ingress_denylist(self, namespace: str, ingress: str) -> list[str]:
        if (namespace, ingress) not in self.denylists:
            raise _missing(f"read ingress {namespace}/{ingress}")
        return sorted(self.denylists[namespace, ingress])

    def set_ingress_denylist(self, namespace: str, ingress: str, cidrs: list[str]) -> list[str]:
        self.ingress_denylist(namespace, ingress)
        self.calls.append(f"denylist {namespace}/{ingress} {','.join(sorted(set(cidrs)))}")
        self.denylists[namespace, ingress] = set(cidrs)
        return sorted(set(cidrs))
