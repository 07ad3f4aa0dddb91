"""Demo services that follow the simulated cluster.

Error model, per service and per tick:
- no ready pod: every request fails (503 on every endpoint);
- load above capacity (ready replicas x capacity per replica): the excess fails, so scaling
  up really helps;
- a revision whose image tag contains `-errors` fails a share of what it serves: only a
  rollback fixes that;
- a failing dependency fails half the requests, unless the circuit breaker (ConfigMap
  `<service>-flags`, key `circuit_breaker` = on) sheds them to a fallback; the dependency
  itself (`/dependencies/payments/health`) then answers 503;
- a revision whose tag contains `-breaks-payments` sends the dependency requests it rejects:
  half the requests fail and `/health` names payments, while payments itself answers 200;
- a feature flag turned on (ConfigMap `<service>-flags`, key `new_checkout` = on) fails 40% of
  what any revision serves, and nothing but `/metrics` shows it: a fault no remedy here fixes.
- added latency (`/_sandbox/latency`) slows every answer but `/metrics`'s: slow, not down.
- a volume claim filled past 98% (`/_sandbox/volume`) fails the writes, 40% of requests (no
  space left on device); the kubelet's volume stats (`/_sandbox/kubelet/metrics`) show it.
- a canary (`/_sandbox/canary`): a second Deployment `<service>-canary` runs another version
  behind the same Service; requests are split by ready pods, and each version fails (or not)
  by its own tag.
`/metrics` counts requests and errors in all and per version (the image tag that served them),
as a service labelling its metrics with its version does; in Prometheus's text format it also
has the histogram `http_request_duration_seconds` (every request takes 20 ms plus any added
latency), for `histogram_quantile`.
`/health` reports `checks.database` from a real query on the service's PostgreSQL when one
is configured: a table lock held elsewhere makes it fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sandbox.app_database import APP_ROLE
from sandbox.cluster import Cluster
from sandbox.http import Request, Response

BAD_REVISION_ERROR_SHARE = 0.3
DEPENDENCY_ERROR_SHARE = 0.5
FLAG_ERROR_SHARE = 0.4
BASE_LATENCY_SECONDS = 0.02
WRITE_SHARE = 0.4  # of requests: they write to the volume claim, and fail when it is full
VOLUME_WRITES_FAIL_AT = 0.98
VOLUME_CAPACITY_BYTES = 1 << 30  # each claim: 1 GiB
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # le, in seconds (and +Inf)


@dataclass
class DemoService:
    name: str
    namespace: str
    load_rps: float = 50.0
    capacity_per_replica: float = 40.0
    dependency_down: bool = False
    latency_ms: float = 0.0  # added to every answer of its endpoints but /metrics (POST /_sandbox/latency)
    requests: float = 0.0
    errors: float = 0.0
    history: list[tuple[float, float]] = field(default_factory=list)
    versions: dict[str, list[float]] = field(default_factory=dict)  # version -> [requests, errors]
    durations: dict[float, float] = field(default_factory=dict)  # histogram bucket (le) -> requests at most that long
    duration_sum: float = 0.0
    duration_count: float = 0.0  # requests observed since start (seeded, back-dated traffic has no timing)
    canary: str | None = None  # the Deployment of a canary beside it, behind the same Service
    claim: str | None = None  # the PersistentVolumeClaim its pods write to
    volume_used: float = 0.35  # the share of the claim used (POST /_sandbox/volume)

    def tracks(self, cluster: Cluster) -> list[tuple[str, int]]:
        """Each Deployment behind the service's Service (its own, then a canary's) and its ready pods."""
        names = [self.name, *([self.canary] if self.canary else [])]
        return [(name, cluster.ready_pods(self.namespace, name)) for name in names]

    def ready(self, cluster: Cluster) -> int:
        return sum(pods for _, pods in self.tracks(cluster))

    def tick(self, cluster: Cluster, seconds: float) -> None:
        tracks = self.tracks(cluster)
        ready = sum(pods for _, pods in tracks)
        load = self.load_rps * seconds
        if not ready:
            self.count(_version(cluster, self.namespace, self.name), load, load)
        for deployment, pods in tracks:  # the Service spreads requests over every ready pod
            if ready and pods:
                self._serve(cluster, deployment, load * pods / ready, pods * self.capacity_per_replica * seconds)
        self.observe(load, BASE_LATENCY_SECONDS + self.latency_ms / 1000)

    def _serve(self, cluster: Cluster, deployment: str, load: float, capacity: float) -> None:
        version = _version(cluster, self.namespace, deployment)
        served = min(load, capacity)
        failed = load - served
        flags = self.flags(cluster)
        share = 0.0
        if "-errors" in version:
            share += BAD_REVISION_ERROR_SHARE
        if self.payments_failing(version) and flags.get("circuit_breaker") != "on":
            share += DEPENDENCY_ERROR_SHARE
        if flags.get("new_checkout") == "on":
            share += FLAG_ERROR_SHARE
        if self.claim and self.volume_used >= VOLUME_WRITES_FAIL_AT:
            share += WRITE_SHARE
        self.count(version, load, failed + served * min(share, 1.0))

    def observe(self, requests: float, seconds: float) -> None:
        for le in DURATION_BUCKETS:
            if seconds <= le:
                self.durations[le] = self.durations.get(le, 0.0) + requests
        self.duration_sum += requests * seconds
        self.duration_count += requests

    def histogram(self) -> str:
        """http_request_duration_seconds in Prometheus's text format (cumulative buckets)."""
        label = f'service="{self.name}"'
        lines = ["# HELP http_request_duration_seconds Time to answer a request.",
                 "# TYPE http_request_duration_seconds histogram"]
        lines += [f'http_request_duration_seconds_bucket{{{label},le="{le:g}"}} {int(self.durations.get(le, 0.0))}'
                  for le in DURATION_BUCKETS]
        lines += [f'http_request_duration_seconds_bucket{{{label},le="+Inf"}} {int(self.duration_count)}',
                  f"http_request_duration_seconds_sum{{{label}}} {self.duration_sum:.3f}",
                  f"http_request_duration_seconds_count{{{label}}} {int(self.duration_count)}"]
        return "\n".join(lines) + "\n"

    def payments_failing(self, version: str) -> bool:
        """Its calls to payments fail: payments is down, or this revision breaks the calls."""
        return self.dependency_down or "-breaks-payments" in version

    def count(self, version: str, requests: float, errors: float) -> None:
        self.requests += requests
        self.errors += errors
        counts = self.versions.setdefault(version, [0.0, 0.0])
        counts[0] += requests
        counts[1] += errors

    def flags(self, cluster: Cluster) -> dict:
        try:
            return cluster.get("configmaps", self.namespace, f"{self.name}-flags").get("data") or {}
        except Exception:  # noqa: BLE001 - no flags ConfigMap: every flag off
            return {}

    def breaker_on(self, cluster: Cluster) -> bool:
        return self.flags(cluster).get("circuit_breaker") == "on"


def volume_stats(services: list[DemoService]) -> str:
    """The kubelet's volume metrics for each service's claim, in Prometheus's text format, as
    the kubelet serves them (`kubelet_volume_stats_*{namespace, persistentvolumeclaim}`)."""
    lines = []
    for name, help_ in (("capacity_bytes", "Capacity in bytes of the volume"),
                        ("used_bytes", "Number of used bytes in the volume"),
                        ("available_bytes", "Number of available bytes in the volume")):
        lines += [f"# HELP kubelet_volume_stats_{name} {help_}", f"# TYPE kubelet_volume_stats_{name} gauge"]
        for svc in services:
            if svc.claim:
                used = int(svc.volume_used * VOLUME_CAPACITY_BYTES)
                value = {"capacity_bytes": VOLUME_CAPACITY_BYTES, "used_bytes": used,
                         "available_bytes": VOLUME_CAPACITY_BYTES - used}[name]
                lines.append(f'kubelet_volume_stats_{name}{{namespace="{svc.namespace}",'
                             f'persistentvolumeclaim="{svc.claim}"}} {value}')
    return "\n".join(lines) + "\n"


def _image(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.deployment_image(namespace, name)


def _version(cluster: Cluster, namespace: str, deployment: str) -> str:
    return _image(cluster, namespace, deployment).rsplit(":", 1)[-1]


def database_check(url: str | None) -> dict:
    """What the service's own health check does: read its main table, briefly, as the
    application role (so a lock or a full connection limit makes it fail)."""
    if not url:
        return {"status": "ok"}
    import psycopg
    from psycopg.conninfo import make_conninfo

    try:
        with psycopg.connect(make_conninfo(url, user=APP_ROLE), connect_timeout=2, autocommit=True,
                             options="-c lock_timeout=500 -c statement_timeout=1500") as conn:
            conn.execute("SELECT count(*) FROM orders").fetchone()
        return {"status": "ok"}
    except psycopg.Error as exc:
        return {"status": "error", "error": (str(exc).strip().splitlines() or ["error"])[0][:200]}


def endpoint(svc: DemoService, cluster: Cluster, endpoint: str, req: Request, database_url: str | None) -> Response:
    ready = svc.ready(cluster)
    if not ready:
        return Response.json({"status": "unavailable", "reason": "no ready pods"}, 503)
    if svc.latency_ms and endpoint != "metrics":
        time.sleep(svc.latency_ms / 1000)
    if endpoint == "__ok":
        return Response.text("ok")
    if endpoint == "health":
        db = database_check(database_url)
        healthy = db["status"] == "ok"
        checks = {"database": db}
        failing = svc.payments_failing(_image(cluster, svc.namespace, svc.name).rsplit(":", 1)[-1])
        if failing:
            shed = svc.breaker_on(cluster)
            checks["payments"] = {"status": "error", "circuit_breaker": "open" if shed else "closed",
                                  "error": "upstream timeout" if svc.dependency_down else "HTTP 400 from payments"}
        status = "ok" if healthy and not failing else "degraded"
        return Response.json({"status": status, "checks": checks}, 200 if healthy else 503)
    if endpoint == "metrics":
        requests, errors = int(svc.requests), int(svc.errors)
        if "text/plain" in req.header("accept") or req.query.get("format") == "prometheus":
            return Response.text(
                "# HELP http_requests_total Requests served.\n# TYPE http_requests_total counter\n"
                f'http_requests_total{{service="{svc.name}",code="200"}} {requests - errors}\n'
                f'http_requests_total{{service="{svc.name}",code="503"}} {errors}\n' + svc.histogram())
        versions = {v: {"requests": int(c[0]), "errors": int(c[1])} for v, c in svc.versions.items()}
        return Response.json({"requests": requests, "errors": errors, "ready_replicas": ready, "versions": versions})
    return Response.text("not found", 404)
