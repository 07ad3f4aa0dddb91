"""The Kubernetes REST API over the in-memory cluster: discovery, CRUD, patch, scale, logs,
watch, and server-side tables, enough for the real kubectl and the official Python client."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Iterator

from sandbox import metrics_api
from sandbox.cluster import RESOURCES, ApiError, Cluster
from sandbox.http import Request, Response
from sandbox.rbac import ADMIN, Attributes, Authorizer
from sandbox.selectors import matches_fields, matches_labels

_WATCH_CAP_SECONDS = 60.0
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"


def _age(stamp: str | None) -> str:
    if not stamp:
        return "<unknown>"
    seconds = int(time.time() - datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _resource_list(group_version: str) -> dict:
    resources = []
    for res in RESOURCES.values():
        if res.api_version != group_version:
            continue
        resources.append({"name": res.plural, "singularName": res.kind.lower(), "namespaced": res.namespaced,
                          "kind": res.kind, "verbs": list(res.verbs), "shortNames": list(res.short_names)})
        for sub in res.subresources:
            entry = {"name": f"{res.plural}/{sub}", "singularName": "", "namespaced": True, "kind": res.kind,
                     "verbs": ["get", "patch", "update"]}
            if sub == "scale":
                entry.update(group="autoscaling", version="v1", kind="Scale")
            elif sub == "log":
                entry.update(verbs=["get"])
            resources.append(entry)
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}


def _discovery(path: str) -> dict | None:
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0-sandbox", "platform": "linux/amd64"}
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        versions = sorted({(r.group, r.api_version.split("/")[-1]) for r in RESOURCES.values() if r.group}
                          | {("metrics.k8s.io", "v1beta1")})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
             "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in versions]}
    if path == "/api/v1":
        return _resource_list("v1")
    if path == metrics_api.PATH:
        return metrics_api.resource_list()
    parts = path.strip("/").split("/")
    if (
        len(parts) == 3
        and parts[0] == "apis"
        and any(r.api_version == f"{parts[1]}/{parts[2]}" for r in RESOURCES.values())
    ):
        return _resource_list(f"{parts[1]}/{parts[2]}")
    return None


def _parse(path: str) -> tuple[str, str | None, str | None, str | None] | None:
    """(plural, namespace, name, subresource) from an API path, or None."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"]:
        rest = parts[2:]
    elif parts[0] == "apis" and len(parts) >= 3:
        rest = parts[3:]
    else:
        return None
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    elif len(rest) in (1, 2) and rest[0] == "namespaces":
        return "namespaces", None, rest[1] if len(rest) == 2 else None, None
    if not rest or rest[0] not in RESOURCES:
        return None
    return rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None


_TABLE_COLUMNS = {
    "deployments": ["Name", "Ready", "Up-to-date", "Available", "Age"],
    "replicasets": ["Name", "Desired", "Current", "Ready", "Age"],
    "pods": ["Name", "Ready", "Status", "Restarts", "Age"],
    "events": ["Last Seen", "Type", "Reason", "Object", "Message"],
    "nodes": ["Name", "Status", "Roles", "Age", "Version"],
}


def _row(plural: str, obj: dict) -> list:
    meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    if plural == "deployments":
        return [
            meta["name"],
            f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
            status.get("updatedReplicas", 0),
            status.get("availableReplicas", 0),
            _age(meta.get("creationTimestamp")),
        ]
    if plural == "replicasets":
        return [meta["name"], spec.get("replicas", 0), status.get("replicas", 0), status.get("replicas", 0),
                _age(meta.get("creationTimestamp"))]
    if plural == "pods":
        cs = (status.get("containerStatuses") or [{}])[0]
        state = cs.get("state", {})
        shown = state.get("waiting", {}).get("reason") or (
            "Running" if "running" in state else status.get("phase", "Pending")
        )
        return [meta["name"], f"{int(bool(cs.get('ready')))}/1", shown, cs.get("restartCount", 0),
                _age(meta.get("creationTimestamp"))]
    if plural == "events":
        involved = obj.get("involvedObject", {})
        return [_age(obj.get("lastTimestamp")), obj.get("type", ""), obj.get("reason", ""),
                f"{involved.get('kind', '').lower()}/{involved.get('name', '')}", obj.get("message", "")]
    if plural == "nodes":
        ready = next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"), "Unknown")
        shown = "Ready" if ready == "True" else "NotReady"
        if any(t.get("effect") == "NoSchedule" for t in spec.get("taints") or []) and ready == "True":
            shown += ",SchedulingDisabled"
        return [meta["name"], shown, "<none>", _age(meta.get("creationTimestamp")),
                status.get("nodeInfo", {}).get("kubeletVersion", "")]
    return [meta["name"], _age(meta.get("creationTimestamp"))]


def _table(plural: str, items: list[dict], rv: str) -> dict:
    columns = _TABLE_COLUMNS.get(plural, ["Name", "Age"])
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": [{"name": c, "type": "string", "format": "name" if c == "Name" else "", "description": "",
                               "priority": 0} for c in columns],
        "rows": [{"cells": _row(plural, o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                                      "metadata": o["metadata"]}} for o in items],
    }


def _fields(data: bytes) -> dict[int, bytes | int]:
    """A protobuf message's fields (the last of each number): varints and length-delimited."""
    out: dict[int, bytes | int] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number] = varint()
        elif wire == 2:
            size = varint()
            out[number], i = data[i:i + size], i + size
        else:
            raise ValueError(f"protobuf wire type {wire} is not served by the sandbox")
    return out


_RESOURCE_ATTRIBUTES = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource", 7: "name"}


def _protobuf_review(body: bytes) -> dict:
    """A SelfSubjectAccessReview as kubectl sends it (`application/vnd.kubernetes.protobuf`: the
    magic `k8s\\0`, then runtime.Unknown whose field 2 is the object): its resourceAttributes."""
    if not body.startswith(b"k8s\x00"):
        raise ValueError("a protobuf body starts with k8s\\0")
    review = _fields(_bytes(_fields(body[4:]), 2))
    attributes = _fields(_bytes(_fields(_bytes(review, 2)), 1))
    return {"spec": {"resourceAttributes": {name: _bytes(attributes, n).decode()
                                            for n, name in _RESOURCE_ATTRIBUTES.items() if n in attributes}}}


def _bytes(fields: dict[int, bytes | int], number: int) -> bytes:
    value = fields.get(number, b"")
    return value if isinstance(value, bytes) else b""


def _verb(method: str, name: str | None, query: dict[str, str]) -> str:
    """The authorizer's verb for a request, as the API server derives it."""
    if method == "GET":
        if query.get("watch") in ("true", "1"):
            return "watch"
        return "get" if name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}.get(method, method.lower())


def _attributes(req: Request, parsed: tuple[str, str | None, str | None, str | None]) -> Attributes:
    plural, namespace, name, sub = parsed
    return Attributes(_verb(req.method, name, req.query), RESOURCES[plural].group, plural, sub or "",
                      namespace or "", name or "")


class KubeApi:
    def __init__(self, cluster: Cluster, authorizer: Authorizer, load: metrics_api.Load | None = None):
        self.cluster = cluster
        self.authorizer = authorizer
        self.load = load  # what each deployment's pods serve, for the metrics API (None: it is not served)

    def handle(self, req: Request) -> Response | None:
        if not (req.path.startswith(("/api", "/version", "/openapi")) and not req.path.startswith("/apis-")):
            return None
        user = self.authorizer.user(req.header("authorization"))
        # /version is public, as on a real API server (system:public-info-viewer).
        if req.path != "/version" and user is None:
            return Response.json(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        try:
            return self._handle(req, user or "")
        except ApiError as err:
            return Response.json(err.status(), err.code)
        except (ValueError, KeyError, TypeError) as err:
            return Response.json(ApiError(400, "BadRequest", str(err)).status(), 400)

    def _handle(self, req: Request, user: str) -> Response:
        discovery = _discovery(req.path)  # discovery is open to every authenticated user (system:discovery)
        if discovery is not None:
            return Response.json(discovery)
        if req.path == ACCESS_REVIEWS and req.method == "POST":
            return Response.json(self._review(req, user), 201)
        if req.path.startswith(metrics_api.PATH + "/") and self.load is not None:
            return self._metrics(req, user)
        parsed = _parse(req.path)
        if parsed is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        asked = _attributes(req, parsed)
        if not self.authorizer.allows(user, asked):
            raise ApiError(403, "Forbidden", asked.forbidden_message(user))
        plural, namespace, name, sub = parsed
        c, m = self.cluster, req.method
        if sub == "scale" and plural == "deployments":
            if m == "GET":
                return Response.json(c.get_scale(namespace, name))
            body = req.json()
            ctype = req.header("content-type") if m == "PATCH" else None
            return Response.json(c.set_scale(namespace, name, body, ctype))
        if sub == "log" and plural == "pods" and m == "GET":
            tail = req.query.get("tailLines")
            return Response.text(c.pod_logs(namespace, name, req.query.get("container"),
                                            int(tail) if tail else None, req.query.get("previous") == "true"))
        if sub == "status" and m == "GET":
            return Response.json(c.get(plural, namespace or "", name))
        if sub:
            raise ApiError(404, "NotFound", f"subresource {sub} is not served by the sandbox")
        if name is None:
            if m == "GET":
                if req.query.get("watch") in ("true", "1"):
                    return self._watch(req, plural, namespace)
                items = c.list(plural, namespace, req.query.get("labelSelector"), req.query.get("fieldSelector"))
                if "as=Table" in req.header("accept"):
                    return Response.json(_table(plural, items, c.resource_version))
                res = RESOURCES[plural]
                return Response.json({"kind": f"{res.kind}List", "apiVersion": res.api_version,
                                      "metadata": {"resourceVersion": c.resource_version}, "items": items})
            if m == "POST":
                return Response.json(c.create(plural, namespace or "", req.json()), 201)
        else:
            if m == "GET":
                obj = c.get(plural, namespace or "", name)
                if "as=Table" in req.header("accept"):
                    return Response.json(_table(plural, [obj], obj["metadata"]["resourceVersion"]))
                return Response.json(obj)
            if m == "PUT":
                return Response.json(c.replace(plural, namespace or "", name, req.json()))
            if m == "PATCH":
                return Response.json(c.patch(plural, namespace or "", name, req.json(), req.header("content-type")))
            if m == "DELETE":
                c.delete(plural, namespace or "", name)
                return Response.json({"kind": "Status", "apiVersion": "v1", "status": "Success",
                                      "details": {"name": name, "kind": plural}})
        raise ApiError(405, "MethodNotAllowed", f"{m} is not supported on {req.path}")

    def _metrics(self, req: Request, user: str) -> Response:
        """GET .../namespaces/NS/pods[/NAME]: PodMetrics, authorized as (get|list, metrics.k8s.io, pods)."""
        found = metrics_api.parse(req.path)
        if found is None or req.method != "GET" or self.load is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace, name = found
        asked = Attributes("get" if name else "list", "metrics.k8s.io", "pods", "", namespace or "", name or "")
        if not self.authorizer.allows(user, asked):
            raise ApiError(403, "Forbidden", asked.forbidden_message(user))
        items = metrics_api.pod_metrics(self.cluster, self.load, namespace, name, req.query.get("labelSelector"))
        if name:
            if not items:
                raise ApiError(404, "NotFound", f'podmetrics.metrics.k8s.io "{name}" not found')
            return Response.json(items[0])
        return Response.json({"kind": "PodMetricsList", "apiVersion": metrics_api.GROUP_VERSION,
                              "metadata": {}, "items": items})

    def _review(self, req: Request, user: str) -> dict:
        """A SelfSubjectAccessReview (what `kubectl auth can-i` asks): may I do this? Every
        authenticated user may ask (system:basic-user); asking is not recorded as a use."""
        body = _protobuf_review(req.body) if "protobuf" in req.header("content-type") else (req.json() or {})
        ra = (body.get("spec") or {}).get("resourceAttributes") or {}
        asked = Attributes(ra.get("verb", ""), ra.get("group", ""), ra.get("resource", ""), ra.get("subresource", ""),
                           ra.get("namespace", ""), ra.get("name", ""))
        rbac = self.authorizer.rbac
        allowed = user == ADMIN or rbac is None or rbac.allows(user, asked)
        return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "metadata": {},
                "spec": body.get("spec") or {}, "status": {"allowed": allowed, **(
                    {} if allowed else {"reason": "no RBAC rule of the sandbox's rendered manifests allows it"})}}

    def _watch(self, req: Request, plural: str, namespace: str | None) -> Response:
        since = int(req.query.get("resourceVersion") or 0) or int(self.cluster.resource_version)
        limit = min(float(req.query.get("timeoutSeconds") or _WATCH_CAP_SECONDS), _WATCH_CAP_SECONDS)
        labels, fields = req.query.get("labelSelector"), req.query.get("fieldSelector")

        def stream() -> Iterator[bytes]:
            rv, deadline = since, time.monotonic() + limit
            yield b""
            while (remaining := deadline - time.monotonic()) > 0:
                for ev in self.cluster.watch_since(rv, min(remaining, 5.0)):
                    rv = ev.rv
                    meta = ev.obj["metadata"]
                    if ev.plural != plural or (namespace and meta.get("namespace") != namespace):
                        continue
                    if matches_labels(meta.get("labels") or {}, labels) and matches_fields(ev.obj, fields):
                        yield json.dumps({"type": ev.type, "object": ev.obj}).encode() + b"\n"

        return Response(200, stream(), {"Content-Type": "application/json"})
