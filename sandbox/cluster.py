"""An in-memory Kubernetes cluster: object store, resource versions, watch events, and a
deployment controller that keeps ReplicaSet revision history the way the real one does.

Simplifications, on purpose: pods are replaced all at once (the `Recreate` strategy), a pod
whose image tag ends in `-broken` crash-loops and never becomes ready, and a healthy pod
becomes ready `ready_delay` seconds after it was created.
"""

from __future__ import annotations

import copy
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sandbox.controllers import DeploymentController
from sandbox.k8s_objects import (
    RESOURCES,
    REVISION,
    ApiError,
    WatchEvent,
    _PodRuntime,
    now_iso,
)
from sandbox.nodes import NODE_NAMES, node_object
from sandbox.patch import apply_patch
from sandbox.selectors import matches_fields, matches_labels, selector_string

# What every seeded container asks for and may use (a service outgrowing its memory limit is OOM-killed).
CONTAINER_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}


class Cluster(DeploymentController):
    """Thread-safe object store with a deployment controller driven by `tick()`."""

    def __init__(self, ready_delay: float = 1.0, crash_period: float = 3.0, progress_deadline: int = 60):
        self.ready_delay = ready_delay
        self.crash_period = crash_period
        # lines a service's pods log (POST /_sandbox/logs), e.g. one that logs a credential
        self.app_log_lines: dict[tuple[str, str], list[str]] = {}
        self.default_progress_deadline = progress_deadline
        # deployments whose pods outgrow their memory limit (POST /_sandbox/memory): OOM-killed
        self.memory_leaks: set[tuple[str, str]] = set()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._rv = 1
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._controlled_index: dict[tuple[str, str, str], list[dict]] = {}
        self._controlled_at = 0  # the resource version _controlled_index was built at
        self._pods: dict[tuple[str, str], _PodRuntime] = {}
        self._progress_started: dict[tuple[str, str], float] = {}
        self.events: list[WatchEvent] = []
        for index, name in enumerate(NODE_NAMES):
            self.create("nodes", "", node_object(name, index))

    # -- store ---------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @property
    def resource_version(self) -> str:
        return str(self._rv)

    def _store(self, plural: str, obj: dict, event_type: str) -> dict:
        meta = obj["metadata"]
        meta["resourceVersion"] = self._next_rv()
        key = (plural, meta.get("namespace", ""), meta["name"])
        if event_type == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self.events.append(WatchEvent(self._rv, event_type, plural, copy.deepcopy(obj)))
        del self.events[:-2000]
        self.changed.notify_all()
        return obj

    def get(self, plural: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self._objects.get((plural, namespace if RESOURCES[plural].namespaced else "", name))
            if obj is None:
                group = RESOURCES[plural].group
                res = f"{plural}.{group}" if group else plural
                raise ApiError(404, "NotFound", f'{res} "{name}" not found')
            return copy.deepcopy(obj)

    def deployment_image(self, namespace: str, name: str) -> str:
        """The image of a deployment's first container ("" if there is no such deployment or
        container), read without copying the object: the services ask for it every tick."""
        with self.lock:
            dep = self._objects.get(("deployments", namespace, name))
            try:
                return str(dep["spec"]["template"]["spec"]["containers"][0].get("image", "")) if dep else ""
            except (KeyError, IndexError, TypeError, AttributeError):
                return ""

    def list(self, plural: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict]:
        with self.lock:
            items = [
                copy.deepcopy(o) for (p, ns, _), o in sorted(self._objects.items())
                if p == plural and (not namespace or ns == namespace)
                and matches_labels(o["metadata"].get("labels") or {}, label_selector)
                and matches_fields(o, field_selector)
            ]
            return items

    def create(self, plural: str, namespace: str, obj: dict) -> dict:
        res = RESOURCES[plural]
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            name = meta.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{res.kind} name is required")
            if res.namespaced:
                if namespace != "default" and ("namespaces", "", namespace) not in self._objects:
                    raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found')
                meta["namespace"] = namespace
            key = (plural, namespace if res.namespaced else "", name)
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{plural} "{name}" already exists')
            obj["apiVersion"], obj["kind"] = res.api_version, res.kind
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_iso())
            meta["generation"] = 1
            _stamp_write(plural, obj, None)
            self._store(plural, obj, "ADDED")
            if plural == "deployments":
                self._reconcile_deployment(namespace, name)
            return copy.deepcopy(self._objects[key])

    def replace(self, plural: str, namespace: str, name: str, obj: dict) -> dict:
        with self.lock:
            current = self.get(plural, namespace, name)
            sent_rv = obj.get("metadata", {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {plural} "{name}": '
                    "the object has been modified; please apply your changes to the latest version and try again",
                )
            return self._update(plural, current, copy.deepcopy(obj))

    def patch(self, plural: str, namespace: str, name: str, body: Any, content_type: str) -> dict:
        with self.lock:
            current = self.get(plural, namespace, name)
            return self._update(plural, current, apply_patch(current, body, content_type))

    def _update(self, plural: str, current: dict, new: dict) -> dict:
        meta = new.setdefault("metadata", {})
        for key in ("uid", "creationTimestamp", "namespace", "name", "generation", "ownerReferences"):
            if key in current["metadata"] and key not in meta:
                meta[key] = current["metadata"][key]
        meta["name"], meta["uid"] = current["metadata"]["name"], current["metadata"]["uid"]
        new["apiVersion"], new["kind"] = current["apiVersion"], current["kind"]
        if plural == "deployments":
            new["status"] = current.get("status", {})
            if new.get("spec") != current.get("spec"):
                meta["generation"] = current["metadata"].get("generation", 1) + 1
        _stamp_write(plural, new, current)
        self._store(plural, new, "MODIFIED")
        if plural == "deployments":
            self._reconcile_deployment(meta.get("namespace", ""), meta["name"])
        return self.get(plural, meta.get("namespace", ""), meta["name"])

    def delete(self, plural: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.get(plural, namespace, name)
            self._store(plural, obj, "DELETED")
            if plural == "deployments":
                for rs in self._owned("replicasets", namespace, obj["metadata"]["uid"]):
                    self._scale_replicaset(rs, 0)
                    self._store("replicasets", rs, "DELETED")
            return obj

    # -- scale subresource ---------------------------------------------------------------
    def get_scale(self, namespace: str, name: str) -> dict:
        dep = self.get("deployments", namespace, name)
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: dep["metadata"][k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            },
            "spec": {"replicas": dep["spec"].get("replicas", 1)},
            "status": {
                "replicas": dep.get("status", {}).get("replicas", 0),
                "selector": selector_string(dep["spec"]["selector"].get("matchLabels", {})),
            },
        }

    def set_scale(self, namespace: str, name: str, body: Any, content_type: str | None) -> dict:
        with self.lock:
            scale = self.get_scale(namespace, name)
            new = apply_patch(scale, body, content_type) if content_type else body
            replicas = (new.get("spec") or {}).get("replicas")
            if not isinstance(replicas, int) or replicas < 0:
                raise ApiError(
                    422, "Invalid", f"spec.replicas: Invalid value: {replicas!r}: must be a non-negative integer"
                )
            self.patch("deployments", namespace, name, {"spec": {"replicas": replicas}}, "application/merge-patch+json")
            return self.get_scale(namespace, name)

    # -- the deployment controller ---------------------------------------------------------
    def _owned(self, plural: str, namespace: str, owner_uid: str) -> list[dict]:
        return list(self._controlled().get((plural, namespace, owner_uid), ()))  # a copy: the index stays as built

    def _controlled(self) -> dict[tuple[str, str, str], list[dict]]:
        """Every object with a controller, by (plural, namespace, the controller's uid), in the
        order stored. Built again only after something was stored (every change goes through
        `_store`, which moves the resource version): the deployment controller asks for each
        deployment's replica sets and their pods ten times a second, and scanning every object
        for each ask was most of the sandbox's CPU with fifty services."""
        if self._controlled_at != self._rv:
            index: dict[tuple[str, str, str], list[dict]] = {}
            for (plural, namespace, _), obj in self._objects.items():
                for ref in obj["metadata"].get("ownerReferences", []):
                    if ref.get("controller"):
                        index.setdefault((plural, namespace, ref.get("uid")), []).append(obj)
            self._controlled_index, self._controlled_at = index, self._rv
        return self._controlled_index

    def replicasets_of(self, namespace: str, name: str) -> list[dict]:
        with self.lock:
            dep = self.get("deployments", namespace, name)
            return [copy.deepcopy(rs) for rs in self._owned("replicasets", namespace, dep["metadata"]["uid"])]

    def tick(self) -> None:
        with self.lock:
            self._autoscale()
            for (_, ns, name) in [k for k in self._objects if k[0] == "deployments"]:
                self._refresh_status(ns, name)

    def _autoscale(self) -> None:
        """A HorizontalPodAutoscaler keeps its deployment's replicas within its bounds (it has no
        metrics here, so within the bounds it leaves the count alone): a manual scale outside
        them is reverted, as the real controller does."""
        for (plural, ns, _), hpa in list(self._objects.items()):
            if plural != "horizontalpodautoscalers":
                continue
            ref, spec = hpa["spec"].get("scaleTargetRef") or {}, hpa["spec"]
            dep = self._objects.get(("deployments", ns, ref.get("name", "")))
            if ref.get("kind") != "Deployment" or dep is None:
                continue
            replicas = dep["spec"].get("replicas", 1)
            wanted = min(max(replicas, spec.get("minReplicas", 1)), spec.get("maxReplicas", replicas))
            if wanted != replicas:
                dep["spec"]["replicas"] = wanted
                self._reconcile_deployment(ns, dep["metadata"]["name"])

    # -- logs ------------------------------------------------------------------------------
    def pod_logs(self, namespace: str, name: str, container: str | None = None, tail: int | None = None,
                 previous: bool = False) -> str:
        with self.lock:
            pod = self.get("pods", namespace, name)
            rt = self._pods.get((namespace, name))
        spec_container = pod["spec"]["containers"][0]
        if container and container not in {c["name"] for c in pod["spec"]["containers"]}:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
        image = spec_container.get("image", "")
        start = rt.created if rt else time.time()
        if rt and rt.broken:
            lines = [f"{now_iso(start)} starting {image}",
                     f"{now_iso(start)} loading configuration from /etc/app/config.yaml",
                     f"{now_iso(start)} ERROR config: required key 'database.url' is missing",
                     f"{now_iso(start)} FATAL cannot start: invalid configuration (exit code 1)"]
        else:
            if previous:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'previous terminated container "{spec_container["name"]}" in pod "{name}" not found',
                )
            lines = [f"{now_iso(start)} starting {image}", f"{now_iso(start)} listening on :8080"]
            lines += [f"{now_iso(start + i)} GET /health 200 1ms" for i in range(1, 4)]
        app = (pod["metadata"].get("labels") or {}).get("app", "")
        lines += [f"{now_iso()} {line}" for line in self.app_log_lines.get((namespace, app), [])]
        if tail is not None and tail >= 0:
            lines = lines[-tail:] if tail else []
        return "".join(line + "\n" for line in lines)

    # -- helpers for the rest of the sandbox -----------------------------------------------
    def set_memory_leak(self, namespace: str, deployment: str, leaking: bool) -> int:
        """The deployment's pods (now and later ones) use more memory than their limit and are
        OOM-killed in a loop, whatever their image; or no longer. Returns the pods affected."""
        with self.lock:
            dep = self._objects[("deployments", namespace, deployment)]
            (self.memory_leaks.add if leaking else self.memory_leaks.discard)((namespace, deployment))
            now, affected = time.time(), 0
            for rs in self._owned("replicasets", namespace, dep["metadata"]["uid"]):
                for pod in self._owned("pods", namespace, rs["metadata"]["uid"]):
                    rt = self._pods.get((namespace, pod["metadata"]["name"]))
                    if rt is not None:
                        rt.oom_since, affected = (now if leaking else None), affected + 1
            self._refresh_status(namespace, deployment, now)
            self.changed.notify_all()
            return affected

    def set_node_state(self, name: str, state: str) -> int:
        """The node becomes Ready, NotReady or under pressure (sandbox.nodes.STATES); the pods
        follow at once. Returns how many pods run on it."""
        with self.lock:
            current = self.get("nodes", "", name)
            index = NODE_NAMES.index(name) if name in NODE_NAMES else len(NODE_NAMES)
            fresh = node_object(name, index, state)
            self._update("nodes", current, {**current, "spec": fresh["spec"], "status": fresh["status"]})
            for (_, ns, dep) in [k for k in self._objects if k[0] == "deployments"]:
                self._refresh_status(ns, dep)
            return sum(1 for (p, _, _), o in self._objects.items() if p == "pods" and o["spec"].get("nodeName") == name)

    def ready_pods(self, namespace: str, deployment: str) -> int:
        with self.lock:
            dep = self._objects.get(("deployments", namespace, deployment))
            return (dep or {}).get("status", {}).get("readyReplicas", 0)

    def watch_since(self, rv: int, timeout: float) -> list[WatchEvent]:
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                found = [e for e in self.events if e.rv > rv]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self.changed.wait(remaining)


def _stamp_write(plural: str, new: dict, current: dict | None) -> None:
    """metadata.managedFields as the API server keeps it for ConfigMaps and Secrets: a write that
    changes the object's content stamps its time; one that changes nothing keeps the old time."""
    if plural not in ("configmaps", "secrets"):
        return
    content = {k: v for k, v in new.items() if k not in ("metadata", "apiVersion", "kind")}
    if current is not None and content == {k: v for k, v in current.items()
                                           if k not in ("metadata", "apiVersion", "kind")}:
        new["metadata"]["managedFields"] = current["metadata"].get("managedFields", [])
        return
    stamp = now_iso() if current is not None else new["metadata"].get("creationTimestamp") or now_iso()
    new["metadata"]["managedFields"] = [{"manager": "kubectl", "operation": "Update" if current else "Create",
                                         "apiVersion": "v1", "time": stamp, "fieldsType": "FieldsV1"}]


@dataclass
class Seed:
    namespace: str
    name: str
    images: list[str]  # oldest first; the last one is live
    replicas: int = 3
    container: str | None = None
    age_hours: list[float] = field(default_factory=list)
    secrets: tuple[str, ...] = ()  # Secrets its container reads at start (envFrom)
    claims: tuple[str, ...] = ()  # PersistentVolumeClaims its pods mount (under /data/<claim>)


def canary_of(stable: dict, name: str, image: str, replicas: int) -> dict:
    """A canary Deployment beside `stable`, as a progressive-delivery setup makes one: the same
    pod template with another image, labelled track=canary (so the Service, which selects on
    the app label alone, sends it its share of requests), and its own selector."""
    template = copy.deepcopy(stable["spec"]["template"])
    labels = {**template["metadata"].get("labels", {}), "track": "canary"}
    template["metadata"]["labels"] = labels
    template["spec"]["containers"][0]["image"] = image
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels}, "strategy": {"type": "Recreate"},
                     "revisionHistoryLimit": 10, "template": template}}


def _env_from(seed: Seed) -> list[dict]:
    return [{"configMapRef": {"name": f"{seed.name}-config", "optional": True}},
            *({"secretRef": {"name": name}} for name in seed.secrets)]


def _pod_spec(seed: Seed, container: str, image: str) -> dict:
    main = {"name": container, "image": image, "ports": [{"containerPort": 8080}], "resources": CONTAINER_RESOURCES,
            "envFrom": _env_from(seed)}
    spec: dict = {"containers": [main]}
    if seed.claims:
        main["volumeMounts"] = [{"name": claim, "mountPath": f"/data/{claim}"} for claim in seed.claims]
        spec["volumes"] = [{"name": claim, "persistentVolumeClaim": {"claimName": claim}} for claim in seed.claims]
    return spec


def seed_deployment(cluster: Cluster, seed: Seed) -> None:
    """Create a deployment and roll it through `images`, back-dating each revision."""
    container = seed.container or seed.name
    labels = {"app": seed.name}
    first, *rest = seed.images
    with cluster.lock:
        cluster.create("deployments", seed.namespace, {
            "metadata": {"name": seed.name, "labels": labels},
            "spec": {"replicas": seed.replicas, "selector": {"matchLabels": labels},
                     "strategy": {"type": "Recreate"}, "revisionHistoryLimit": 10,
                     "template": {"metadata": {"labels": labels}, "spec": _pod_spec(seed, container, first)}},
        })
        for image in rest:
            cluster.patch("deployments", seed.namespace, seed.name,
                          {"spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}}},
                          "application/strategic-merge-patch+json")
        now = time.time()
        for rs in cluster.replicasets_of(seed.namespace, seed.name):
            rev = int(rs["metadata"]["annotations"][REVISION])
            hours = seed.age_hours[rev - 1] if rev - 1 < len(seed.age_hours) else 0
            stored = cluster._objects[("replicasets", seed.namespace, rs["metadata"]["name"])]
            stored["metadata"]["creationTimestamp"] = now_iso(now - hours * 3600)
        for (p, ns, _), pod in cluster._objects.items():
            if p == "pods" and ns == seed.namespace:
                cluster._pods[(ns, pod["metadata"]["name"])].created -= 3600 * 24
        cluster._progress_started[(seed.namespace, seed.name)] = now - 3600 * 24
        cluster._refresh_status(seed.namespace, seed.name)
