"""Each diagnostic check's name and the facts it reports: one model per check.

A check (`tasks/`) writes its facts into `Finding.data`; the planning rules
(`incidents/*_rules.py`), the verifications and the report read them. A Finding validates
its data by its check's model (`parse`), so a key one side writes and the other does not
read is caught where it is written. Every field has a default: a check that could not see
something leaves it unknown, and the rules treat unknown as unknown, not as healthy.

`as_dict()` is what the timeline and a stored diagnosis keep: the fields the check set, so
a diagnosis stored before the models existed reads back unchanged.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from incidents.errors import RunbookError

# the checks every scenario shares (service down)
HEALTH = "health endpoints"
ROLLOUT = "rollout and pods"
DEPLOYS = "recent deployments"
RUN_LOGS = "failed run logs"
POD_LOGS = "pod logs"
CONFIG = "config changes"
NETWORK = "network and DNS"
NODES = "nodes"
USAGE = "resource usage"
VOLUMES = "volumes"
# high error rate
RATE = "error rate (/metrics)"
PROMETHEUS = "error rate (Prometheus)"
LATENCY = "latency (Prometheus)"
COMMITS = "recent commits"
BREAKER = "circuit breaker"
# database issues
REACH = "database reachability"
SESSIONS = "sessions, locks and queries"
CONNECTIONS = "connections"
REPLICATION = "replication"
CACHE = "cache"
# security incident
EVIDENCE = "evidence snapshot"

Number = int | float  # as measured: an int stays an int, so a stored diagnosis reads back the same


class Facts(BaseModel):
    """No field may be named like a mapping method (keys, items, values, get): Prefect walks
    task parameters with dict(model), which would call it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class NoFacts(Facts):
    """A check that reports only its summary (or one that could not run)."""


class Probe(Facts):
    url: str
    ok: bool
    status: int | None = None
    ms: int | None = None


class HealthFacts(Facts):
    results: list[Probe] = []
    failing_checks: list[str] = []  # what the service's /health names as failing
    error_rate: float | None = None  # from a /metrics body, when an endpoint serves one
    slo_ms: float | None = None  # the latency objective the answers were held to
    slow: list[Probe] = []  # endpoints that answered, slower than the objective


class PodFacts(Facts):
    name: str = ""
    ready: bool = False
    restarts: int = 0
    waiting: str | None = None
    last_termination: str | None = None
    image: str = ""
    node: str | None = None  # the node it runs on (None: not scheduled)


class Autoscaler(Facts):
    """The HPA that owns the deployment's replica count."""

    name: str
    min: int
    max: int


class RolloutFacts(Facts):
    revision: int | None = None
    image: str | None = None
    rollout_done: bool | None = None
    rollout_failed: bool | None = None
    oom_killed: int = 0
    memory_limit: str | None = None  # the container's resources.limits.memory, as the deployment sets it
    desired_replicas: int | None = None
    autoscaler: Autoscaler | None = None
    paused: bool = False
    pods: list[PodFacts] = []


class Revision(Facts):
    revision: int
    image: str = ""
    created: str | None = None  # ISO time it went live
    age: str | None = None


class WorkflowRun(Facts):
    id: int
    title: str | None = None
    workflow: str | None = None
    conclusion: str | None = None
    created_at: str | None = None


class DeploysFacts(Facts):
    revisions: list[Revision] = []  # newest first
    recent_revision: Revision | None = None  # the newest, when it went live in the window
    previous_revision: Revision | None = None
    runs: list[WorkflowRun] = []


class RunLogsFacts(Facts):
    run_id: int | None = None


class PodLogsFacts(Facts):
    pod: str | None = None
    error_lines: int = 0


class VersionTraffic(Facts):
    window_requests: Number = 0
    window_errors: Number = 0
    requests: Number = 0
    errors: Number = 0


class RateFacts(Facts):
    rate: Number | None = None
    requests: Number | None = None
    errors: Number | None = None
    rps: Number | None = None
    versions: dict[str, VersionTraffic] = {}


class PrometheusFacts(Facts):
    rate: Number | None = None


class CommitsFacts(Facts):
    count: int = 0


class BreakerFacts(Facts):
    value: str | None = None


class SessionBrief(Facts):
    """A backend as the check saw it; `seconds` in its state (in its query, for a long query)."""

    pid: int
    role: str | None = None
    superuser: bool = False
    state: str | None = None
    backend_start: str = ""
    seconds: Number = 0
    query: str = ""
    waiters: list[int] = []  # a root blocker's blocked sessions


class SessionsFacts(Facts):
    root_blockers: list[SessionBrief] = []
    idle_in_transaction: list[SessionBrief] = []
    long_queries: list[SessionBrief] = []
    blocked: list[int] = []


class ConnectionScope(Facts):
    scope: str  # "server" or "role <name>"
    used: int
    limit: int


class ConnectionsFacts(Facts):
    scopes: list[ConnectionScope] = []
    pressured: list[ConnectionScope] = []
    idle_sessions: list[SessionBrief] = []


class ReplicationFacts(Facts):
    role: Literal["primary", "replica"] | None = None
    lag: Number | None = None  # a replica's replay lag
    replicas: int | None = None  # a primary's replicas


class CacheFacts(Facts):
    key_count: int | None = Field(default=None, alias="keys")  # keys under the service's prefix
    evicted: int = 0


class SecretMeta(Facts):
    name: str
    data_keys: list[str] = Field(default=[], alias="keys")
    resource_version: str | None = None


class Containment(Facts):
    """What restricts the service's pods now."""

    labels: dict[str, str] = {}
    policies: list[str] = []  # other NetworkPolicies selecting the pods
    policy_blocks: list[str] = []  # what our block policy already blocks
    denylist: list[str] | None = None  # the Ingress's deny list (None: no Ingress)
    denylist_error: str | None = None


class ConfigChange(Facts):
    kind: str  # configmap | secret
    name: str
    changed_at: str | None = None  # ISO time of its last change; None: it could not be read
    error: str | None = None


class ConfigFacts(Facts):
    objects: list[ConfigChange] = []  # every ConfigMap and Secret the pods read


class LatencyFacts(Facts):
    p50_ms: float | None = None
    p99_ms: float | None = None
    slo_ms: float | None = None


class VolumeUse(Facts):
    claim: str
    used_ratio: float | None = None  # None: the kubelet's stats for it were not found


class VolumeFacts(Facts):
    volumes: list[VolumeUse] = []  # each PersistentVolumeClaim the pods mount
    full_at: float = 0.9

    def full(self) -> list[VolumeUse]:
        return [v for v in self.volumes if v.used_ratio is not None and v.used_ratio >= self.full_at]


class PodUsageFacts(Facts):
    pod: str
    cpu_m: float
    memory_mi: float


class UsageFacts(Facts):
    """The pods' newest samples from the metrics API, and the container's requests and limits."""

    pods: list[PodUsageFacts] = []
    cpu_request_m: float | None = None
    cpu_limit_m: float | None = None
    memory_request_mi: float | None = None
    memory_limit_mi: float | None = None

    @property
    def cpu_peak_m(self) -> float | None:
        return max((p.cpu_m for p in self.pods), default=None)

    @property
    def memory_peak_mi(self) -> float | None:
        return max((p.memory_mi for p in self.pods), default=None)


class NodeState(Facts):
    """A node one of the service's pods runs on."""

    name: str
    ready: str = "Unknown"  # the Ready condition: True, False, or Unknown (its kubelet stopped reporting)
    pressures: list[str] = []  # MemoryPressure, DiskPressure, PIDPressure that hold
    unschedulable: bool = False  # no new pod is placed there (cordoned or tainted NoSchedule)
    pods: int = 0  # the service's pods on it
    error: str | None = None  # the node could not be read


class NodeFacts(Facts):
    nodes: list[NodeState] = []
    unscheduled: int = 0  # the service's pods that no node took (Pending, unschedulable)
    schedulable: bool | None = None  # whether any node read could take a new pod (None: none readable)


class Reached(Facts):
    name: str
    outcome: str  # ok | http_error | unresolvable | refused | timed_out | unreachable
    detail: str = ""
    status: int | None = None


class NetworkFacts(Facts):
    dependencies: list[Reached] = []  # each dependency, probed directly


class EvidenceFacts(Facts):
    secrets: list[SecretMeta] = []
    log_level: str | None = None
    captured_at: float | None = None
    containment: Containment = Containment()


FACTS: dict[str, type[Facts]] = {
    HEALTH: HealthFacts, ROLLOUT: RolloutFacts, DEPLOYS: DeploysFacts, RUN_LOGS: RunLogsFacts,
    POD_LOGS: PodLogsFacts, RATE: RateFacts, PROMETHEUS: PrometheusFacts, COMMITS: CommitsFacts,
    BREAKER: BreakerFacts, REACH: NoFacts, SESSIONS: SessionsFacts, CONNECTIONS: ConnectionsFacts,
    REPLICATION: ReplicationFacts, CACHE: CacheFacts, EVIDENCE: EvidenceFacts, CONFIG: ConfigFacts,
    NETWORK: NetworkFacts, NODES: NodeFacts, USAGE: UsageFacts, LATENCY: LatencyFacts, VOLUMES: VolumeFacts,
}


class UnknownCheck(RunbookError, ValueError):
    pass


def parse(check: str, data: Facts | dict[str, Any]) -> Facts:
    """The facts of `check`, validated by its model (a ValueError names what is wrong)."""
    model = FACTS.get(check)
    if model is None:
        raise UnknownCheck(f"no check named {check!r} (known: {', '.join(sorted(FACTS))})")
    if isinstance(data, Facts):
        if not isinstance(data, model):
            raise ValueError(f"{type(data).__name__} are not the facts of the {check!r} check")
        return data
    return model.model_validate(data)
