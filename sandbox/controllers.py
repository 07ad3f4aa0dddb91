"""The in-memory cluster's deployment controller: ReplicaSets per pod template with revision
history, scaling, pod status, events, and the Deployment's status and conditions."""

from __future__ import annotations

import copy
import secrets
import time
import uuid
from collections import Counter

from sandbox.k8s_objects import (
    _SAFE,
    REVISION,
    REVISION_HISTORY,
    _available,
    _PodRuntime,
    _progressing,
    is_broken_image,
    new_replicaset,
    now_iso,
    rejects_config,
    rejects_credentials,
    template_without_hash,
)
from sandbox.nodes import reachable, schedulable


def pod_ready(status: dict) -> bool:
    """A pod's readiness as Services and kubectl read it: its Ready condition."""
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])


class DeploymentController:
    """Mixed into Cluster: it uses the cluster's object store (`_objects`, `_store`, `_owned`)."""

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
            current = new_replicaset(dep, namespace, name, template, max_rev + 1, at)
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
                "spec": copy.deepcopy(template["spec"]),
                "status": {"phase": "Pending"},
            }
            node = self._place()
            if node:
                pod["spec"]["nodeName"] = node
            leaking = (ns, meta["ownerReferences"][0]["name"]) in self.memory_leaks
            broken = is_broken_image(image) or self._config_rejected(ns, template["spec"])
            self._pods[(ns, pod_name)] = _PodRuntime(time.time(), broken, time.time() if leaking else None)
            self._store("pods", pod, "ADDED")
        rs["spec"]["replicas"] = replicas
        rs["status"] = {"replicas": replicas, "observedGeneration": meta.get("generation", 1)}
        self._store("replicasets", rs, "MODIFIED")
        owner = meta["ownerReferences"][0]["name"]
        verb = "up" if replicas > old else "down"
        if replicas != old:
            self._record_event(ns, "Deployment", owner, "Normal", "ScalingReplicaSet",
                               f"Scaled {verb} replica set {meta['name']} from {old} to {replicas}")

    def _config_rejected(self, namespace: str, pod_spec: dict) -> bool:
        """A new pod's container reads its ConfigMaps and Secrets (envFrom) at start and exits on
        a bad one."""
        for container in pod_spec.get("containers") or []:
            for source in container.get("envFrom") or []:
                for ref, plural, rejects in (("configMapRef", "configmaps", rejects_config),
                                             ("secretRef", "secrets", rejects_credentials)):
                    name = (source.get(ref) or {}).get("name")
                    found = self._objects.get((plural, namespace, name)) if name else None
                    if found is not None and rejects(found.get("data") or {}):
                        return True
        return False

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

    def _place(self) -> str | None:
        """The scheduler: the schedulable node with the fewest pods, or None (the pod stays Pending)."""
        nodes = [o for (p, _, _), o in self._objects.items() if p == "nodes" and schedulable(o)]
        if not nodes:
            return None
        load = Counter(o["spec"].get("nodeName") for (p, _, _), o in self._objects.items() if p == "pods")
        return min(nodes, key=lambda n: (load[n["metadata"]["name"]], n["metadata"]["name"]))["metadata"]["name"]

    def _schedule_pending(self, pod: dict, rt: _PodRuntime, now: float) -> None:
        """A Pending pod is bound to a node once one can take it; its containers start then."""
        if pod["spec"].get("nodeName"):
            return
        node = self._place()
        if node:
            pod["spec"]["nodeName"] = node
            rt.created = now
            if rt.oom_since is not None:
                rt.oom_since = now

    def _pod_status(self, pod: dict, rt: _PodRuntime, now: float) -> dict:
        node_name = pod["spec"].get("nodeName")
        if not node_name:
            nodes = sum(1 for (p, _, _) in self._objects if p == "nodes")
            return {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": f"0/{nodes} nodes are available: {nodes} node(s) had untolerated taints."}]}
        status = self._container_status(pod, rt, now)
        if not reachable(self._objects.get(("nodes", "", node_name))):
            # the node lifecycle controller marks the pods of an unreachable node not Ready; their
            # containers keep the state the kubelet last reported
            status["conditions"] = [{**c, "status": "False"} if c["type"] == "Ready" else c
                                    for c in status["conditions"]]
        status["hostIP"] = self._node_ip(node_name)
        return status

    def _node_ip(self, node_name: str) -> str:
        node = self._objects.get(("nodes", "", node_name)) or {}
        return next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                     if a["type"] == "InternalIP"), "")

    def _container_status(self, pod: dict, rt: _PodRuntime, now: float) -> dict:
        container = pod["spec"]["containers"][0]
        started = now_iso(rt.created)
        base = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                "containerID": f"sandbox://{pod['metadata']['uid'][:12]}"}
        if rt.broken or rt.oom_since is not None:
            since = rt.created if rt.broken else rt.oom_since or rt.created
            # an OOM kill shows at once (the memory grew before anyone looked); a bad image's first crash takes a period
            restarts = int((now - since) / self.crash_period) + (0 if rt.broken else 1)
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
                oom = not rt.broken
                cs["lastState"] = {"terminated": {"exitCode": 137 if oom else 1,
                                                  "reason": "OOMKilled" if oom else "Error", "startedAt": started,
                                                  "finishedAt": now_iso(since + restarts * self.crash_period)}}
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
            of_template = template_without_hash(rs["spec"]["template"]) == template
            for pod in self._owned("pods", namespace, rs["metadata"]["uid"]):
                rt = self._pods.get((namespace, pod["metadata"]["name"]))
                if rt is None:
                    continue
                self._schedule_pending(pod, rt, now)
                status = self._pod_status(pod, rt, now)
                if status != pod.get("status"):
                    if rt.broken and (status.get("containerStatuses") or [{}])[0].get("restartCount") != \
                            (pod.get("status", {}).get("containerStatuses") or [{}])[0].get("restartCount"):
                        self._record_event(namespace, "Pod", pod["metadata"]["name"], "Warning", "BackOff",
                                           "Back-off restarting failed container")
                    pod["status"] = status
                    self._store("pods", pod, "MODIFIED")
                total += 1
                is_ready = pod_ready(status)
                ready += is_ready
                updated += of_template
        desired = dep["spec"].get("replicas", 1)
        deadline = dep["spec"].get("progressDeadlineSeconds", self.default_progress_deadline)
        started = self._progress_started.get((namespace, name), now)
        stamp = now_iso(started)
        complete = updated == desired and total == desired and ready == desired
        progressing = _progressing(complete, now - started > deadline)
        available = _available(ready >= desired - desired // 4)
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
