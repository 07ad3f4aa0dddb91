"""The objects of the in-memory Kubernetes cluster: resources, API errors, resource versions
and timestamps, pod templates and the ReplicaSets and conditions a deployment controller writes."""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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
        Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",)),
        Resource("", "v1", "pods", "Pod", short_names=("po",), subresources=("log",)),
        Resource("", "v1", "events", "Event", short_names=("ev",)),
        Resource("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
        Resource("", "v1", "secrets", "Secret"),
        Resource("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", short_names=("pvc",)),
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
    clean = _prune(template)  # a new dict or list at every level: the template is not touched
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


LOG_LEVELS = ("debug", "info", "warn", "error")


def rejects_config(data: dict) -> bool:
    """What a demo service does with its ConfigMap at start: a log_level it does not know makes
    it exit (CrashLoopBackOff), as a service validating its config would."""
    return data.get("log_level", "info") not in LOG_LEVELS


def rejects_credentials(data: dict) -> bool:
    """What a demo service does with the Secret it reads at start: an empty credential, or one
    with a trailing newline (written with `echo`, as `echo $TOKEN | base64` does), makes it exit,
    as a client whose first authenticated call is refused would."""
    for encoded in data.values():
        try:
            value = base64.b64decode(encoded or "", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return True
        if not value or value != value.strip():
            return True
    return False


def is_broken_image(image: str) -> bool:
    return image.rsplit(":", 1)[-1].endswith("-broken") if ":" in image else False


@dataclass
class _PodRuntime:
    created: float
    broken: bool
    oom_since: float | None = None  # its memory outgrows the container's limit: OOM-killed again and again


@dataclass
class WatchEvent:
    rv: int
    type: str
    plural: str
    obj: dict


def new_replicaset(dep: dict, namespace: str, name: str, template: dict, revision: int, at: float | None) -> dict:
    """The ReplicaSet a Deployment controller creates for a new pod template (0 replicas)."""
    digest = template_hash(template)
    rs_template = copy.deepcopy(template)
    rs_template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = digest
    owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": dep["metadata"]["uid"],
             "controller": True, "blockOwnerDeletion": True}
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": f"{name}-{digest}", "namespace": namespace, "uid": str(uuid.uuid4()),
                     "creationTimestamp": now_iso(at), "generation": 1,
                     "labels": dict(rs_template["metadata"]["labels"]), "annotations": {REVISION: str(revision)},
                     "ownerReferences": [owner]},
        "spec": {"replicas": 0,
                 "selector": {"matchLabels": {**dep["spec"]["selector"].get("matchLabels", {}), HASH_LABEL: digest}},
                 "template": rs_template},
        "status": {"replicas": 0},
    }


def _progressing(complete: bool, past_deadline: bool) -> dict:
    """A Deployment's Progressing condition, as the controller words it."""
    if complete:
        return {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                "message": "ReplicaSet has successfully progressed."}
    if past_deadline:
        return {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet has timed out progressing."}
    return {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
            "message": "ReplicaSet is progressing."}


def _available(enough: bool) -> dict:
    """A Deployment's Available condition: enough ready pods within maxUnavailable (25 %)."""
    if enough:
        return {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability."}
    return {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
            "message": "Deployment does not have minimum availability."}
