"""An in-memory Kubernetes cluster: object store, resource versions, watch events, and a
deployment controller that keeps ReplicaSet revision history the way the real one does.

Simplifications, on purpose: pods are replaced all at once (the `Recreate` strategy), a pod
whose image tag ends in `-broken` crash-loops and never becomes ready, and a healthy pod
becomes ready `ready_delay` seconds after it was created.
"""

from __future__ import annotations

import copy
import hashlib
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sandbox.patch import apply_patch
from sandbox.selectors import matches_fields, matches_labels, selector_string

REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
HASH_LABEL = "pod-template-hash"
_SAFE = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ("create", "delete", "get", "list", "patch", "update", "watch")
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


RESOURCES: dict[str, Resource] = {
    r.plural: r
    for r in (
        Resource("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",)),
        Resource("", "v1", "pods", "Pod", short_names=("po",), subresources=("log",)),
        Resource("", "v1", "events", "Event", short_names=("ev",)),
        Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
        Resource("", "v1", "secrets", "Secret"),
        Resource("apps", "v1", "deployments", "Deployment", short_names=("deploy",), subresources=("scale", "status")),
        Resource("apps", "v1", "replicasets", "ReplicaSet", short_names=("rs",)),
        Resource("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", short_names=("netpol",)),
        Resource("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",)),
        Resource("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short_names=("hpa",)),
    )
}


class ApiError(Exception):
    """A Kubernetes API error, rendered as a Status object."""

    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code}


def now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def template_hash(template: dict) -> str:
    digest = hashlib.sha256(json.dumps(template_without_hash(template), sort_keys=True).encode()).digest()
    return "".join(_SAFE[b % len(_SAFE)] for b in digest[:10])


def template_without_hash(template: dict) -> dict:
    """The template as the controller compares it: no hash label, and no null or empty fields
    (kubectl sends Go's zero values such as `creationTimestamp: null` and `resources: {}`)."""
    clean = _prune(copy.deepcopy(template))
    labels = clean.get("metadata", {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return clean


def _prune(value: Any) -> Any:
    if isinstance(value, dict):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def is_broken_image(image: str) -> bool:
    return image.rsplit(":", 1)[-1].endswith("-broken") if ":" in image else False


@dataclass
class _PodRuntime:
    created: float
    broken: bool


@dataclass
class WatchEvent:
    rv: int
    type: str
    plural: str
    obj: dict


class Cluster:
    """Thread-safe object store with a deployment controller driven by `tick()`."""

    def __init__(self, ready_delay: float = 1.0, crash_period: float = 3.0, progress_deadline: int = 60):
        self.ready_delay = ready_delay
        self.crash_period = crash_period
        # lines a service's pods log (POST /_sandbox/logs), e.g. one that logs a credential
        self.app_log_lines: dict[tuple[str, str], list[str]] = {}
        self.default_progress_deadline = progress_deadline
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._rv = 1
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._pods: dict[tuple[str, str], _PodRuntime] = {}
        self._progress_started: dict[tuple[str, str], float] = {}
        self.events: list[WatchEvent] = []

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
        return [
            o
            for (p, ns, _), o in self._objects.items()
            if p == plural
            and ns == namespace
            and any(
                ref.get("uid") == owner_uid and ref.get("controller")
                for ref in o["metadata"].get("ownerReferences", [])
            )
        ]

    def replicasets_of(self, namespace: str, name: str) -> list[dict]:
        with self.lock:
            dep = self.get("deployments", namespace, name)
            return [copy.deepcopy(rs) for rs in self._owned("replicasets", namespace, dep["metadata"]["uid"])]

    def _reconcile_deployment(self, namespace: str, name: str, at: float | None = None) -> None:
        dep = self._objects[("deployments", namespace, name)]
        spec = dep["spec"]
        template = template_without_hash(spec["template"])
        owned = self._owned("replicasets", namespace, dep["metadata"]["uid"])
        revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, "0")) for rs in owned]
        current = next((rs for rs in owned if template_without_hash(rs["spec"]["template"]) == template), None)
        max_rev = max(revisions, default=0)
        changed_template = False
        if current is None:
            digest = template_hash(template)
            rs_template = copy.deepcopy(template)
            rs_template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
            current = {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "metadata": {
                    "name": f"{name}-{digest}",
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": now_iso(at),
                    "generation": 1,
                    "labels": dict(rs_template["metadata"]["labels"]),
                    "annotations": {REVISION: str(max_rev + 1)},
                    "ownerReferences": [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": name,
                            "uid": dep["metadata"]["uid"],
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "replicas": 0,
                    "selector": {"matchLabels": {**spec["selector"].get("matchLabels", {}), HASH_LABEL: digest}},
                    "template": rs_template,
                },
                "status": {"replicas": 0},
            }
            self._store("replicasets", current, "ADDED")
            self._record_event(namespace, "Deployment", name, "Normal", "ScalingReplicaSet",
                               f"Created new replica set {current['metadata']['name']}")
            changed_template = True
        else:
            rev = int(current["metadata"].get("annotations", {}).get(REVISION, "0"))
            if rev != max_rev:
                ann = current["metadata"].setdefault("annotations", {})
                history = [h for h in ann.get(REVISION_HISTORY, "").split(",") if h] + [str(rev)]
                ann[REVISION_HISTORY] = ",".join(history)
                ann[REVISION] = str(max_rev + 1)
                self._store("replicasets", current, "MODIFIED")
                changed_template = True
        if changed_template or (namespace, name) not in self._progress_started:
            self._progress_started[(namespace, name)] = time.time() if at is None else at
        dep_ann = dep["metadata"].setdefault("annotations", {})
        new_rev = current["metadata"]["annotations"][REVISION]
        if dep_ann.get(REVISION) != new_rev:
            dep_ann[REVISION] = new_rev
        desired = spec.get("replicas", 1)
        for rs in owned:
            if rs is not current and rs["spec"]["replicas"]:
                self._scale_replicaset(rs, 0)
        if current["spec"]["replicas"] != desired:
            self._scale_replicaset(current, desired)
        self._refresh_status(namespace, name)

    def _scale_replicaset(self, rs: dict, replicas: int) -> None:
        meta = rs["metadata"]
        ns, old = meta["namespace"], rs["spec"]["replicas"]
        pods = self._owned("pods", ns, meta["uid"])
        for pod in pods[replicas:]:
            self._pods.pop((ns, pod["metadata"]["name"]), None)
            self._store("pods", pod, "DELETED")
        template = rs["spec"]["template"]
        image = (template["spec"]["containers"] or [{}])[0].get("image", "")
        for _ in range(len(pods), replicas):
            pod_name = f"{meta['name']}-{''.join(secrets.choice(_SAFE) for _ in range(5))}"
            pod = {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod_name, "namespace": ns, "uid": str(uuid.uuid4()),
                             "creationTimestamp": now_iso(), "labels": dict(template["metadata"].get("labels", {})),
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": meta["name"],
                                                  "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
                "spec": {**copy.deepcopy(template["spec"]), "nodeName": "sandbox-node-1"},
                "status": {"phase": "Pending"},
            }
            self._pods[(ns, pod_name)] = _PodRuntime(time.time(), is_broken_image(image))
            self._store("pods", pod, "ADDED")
        rs["spec"]["replicas"] = replicas
        rs["status"] = {"replicas": replicas, "observedGeneration": meta.get("generation", 1)}
        self._store("replicasets", rs, "MODIFIED")
        owner = meta["ownerReferences"][0]["name"]
        verb = "up" if replicas > old else "down"
        if replicas != old:
            self._record_event(ns, "Deployment", owner, "Normal", "ScalingReplicaSet",
                               f"Scaled {verb} replica set {meta['name']} from {old} to {replicas}")

    def _record_event(self, namespace: str, kind: str, name: str, type_: str, reason: str, message: str) -> None:
        for (p, ns, _), ev in self._objects.items():
            if (p == "events" and ns == namespace and ev["involvedObject"]["name"] == name
                    and ev["reason"] == reason and ev["message"] == message):
                ev["count"] += 1
                ev["lastTimestamp"] = now_iso()
                self._store("events", ev, "MODIFIED")
                return
        stamp = now_iso()
        self._store("events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace, "uid": str(uuid.uuid4()),
                         "creationTimestamp": stamp},
            "involvedObject": {"kind": kind, "namespace": namespace, "name": name},
            "reason": reason, "message": message, "type": type_, "count": 1,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "source": {"component": "sandbox-controller"},
        }, "ADDED")

    def _pod_status(self, pod: dict, rt: _PodRuntime, now: float) -> dict:
        container = pod["spec"]["containers"][0]
        started = now_iso(rt.created)
        base = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                "containerID": f"sandbox://{pod['metadata']['uid'][:12]}"}
        if rt.broken:
            restarts = int((now - rt.created) / self.crash_period)
            cs = {
                **base,
                "ready": False,
                "started": False,
                "restartCount": restarts,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting failed container {container['name']} "
                                   f"in pod {pod['metadata']['name']}",
                    }
                },
            }
            if restarts:
                cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": started,
                                                  "finishedAt": now_iso(rt.created + restarts * self.crash_period)}}
            ready = False
        else:
            ready = now - rt.created >= self.ready_delay
            cs = {
                **base,
                "ready": ready,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": started}},
            }
        cond = "True" if ready else "False"
        return {"phase": "Running", "hostIP": "10.0.0.1", "podIP": "10.244.0.10", "startTime": started,
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": cond},
                               {"type": "ContainersReady", "status": cond}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [cs]}

    def _refresh_status(self, namespace: str, name: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        dep = self._objects.get(("deployments", namespace, name))
        if dep is None:
            return
        owned_rs = self._owned("replicasets", namespace, dep["metadata"]["uid"])
        template = template_without_hash(dep["spec"]["template"])
        total = updated = ready = 0
        for rs in owned_rs:
            for pod in self._owned("pods", namespace, rs["metadata"]["uid"]):
                rt = self._pods.get((namespace, pod["metadata"]["name"]))
                if rt is None:
                    continue
                status = self._pod_status(pod, rt, now)
                if status != pod.get("status"):
                    if rt.broken and status["containerStatuses"][0]["restartCount"] != \
                            (pod.get("status", {}).get("containerStatuses") or [{}])[0].get("restartCount"):
                        self._record_event(namespace, "Pod", pod["metadata"]["name"], "Warning", "BackOff",
                                           "Back-off restarting failed container")
                    pod["status"] = status
                    self._store("pods", pod, "MODIFIED")
                total += 1
                is_ready = status["containerStatuses"][0]["ready"]
                ready += is_ready
                if template_without_hash(rs["spec"]["template"]) == template:
                    updated += 1
        desired = dep["spec"].get("replicas", 1)
        deadline = dep["spec"].get("progressDeadlineSeconds", self.default_progress_deadline)
        started = self._progress_started.get((namespace, name), now)
        stamp = now_iso(started)
        complete = updated == desired and total == desired and ready == desired
        if complete:
            progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                           "message": 'ReplicaSet has successfully progressed.'}
        elif now - started > deadline:
            progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": 'ReplicaSet has timed out progressing.'}
        else:
            progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                           "message": "ReplicaSet is progressing."}
        max_unavailable = desired // 4
        available = {
            "type": "Available",
            "status": "True" if ready >= desired - max_unavailable else "False",
            "reason": "MinimumReplicasAvailable"
            if ready >= desired - max_unavailable
            else "MinimumReplicasUnavailable",
            "message": "Deployment has minimum availability."
            if ready >= desired - max_unavailable
            else "Deployment does not have minimum availability.",
        }
        for cond in (progressing, available):
            cond["lastUpdateTime"] = cond["lastTransitionTime"] = stamp
        status = {"observedGeneration": dep["metadata"].get("generation", 1), "replicas": total,
                  "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
                  "conditions": [available, progressing]}
        if total - ready:
            status["unavailableReplicas"] = total - ready
        if not ready:
            del status["readyReplicas"], status["availableReplicas"]  # the API omits zero counts
        if status != dep.get("status"):
            dep["status"] = status
            self._store("deployments", dep, "MODIFIED")

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


@dataclass
class Seed:
    namespace: str
    name: str
    images: list[str]  # oldest first; the last one is live
    replicas: int = 3
    container: str | None = None
    age_hours: list[float] = field(default_factory=list)


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
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"containers": [{"name": container, "image": first,
                                                           "ports": [{"containerPort": 8080}]}]}}},
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
