"""What the config says about one service: where it runs, its repository, scaling, database,
cache, circuit breaker, error budget and security controls."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from incidents.config_base import _DNS_LABEL, _REPO, _check_secret_name, _Model


class KubernetesTarget(_Model):
    namespace: str = Field(pattern=_DNS_LABEL)
    deployment: str = Field(pattern=_DNS_LABEL)
    container: str = Field(pattern=_DNS_LABEL)


class GitHubTarget(_Model):
    repo: str = Field(pattern=_REPO)
    rollback_workflow: str = "rollback.yml"
    ref: str = "main"


class Scaling(_Model):
    min_replicas: int = Field(1, ge=0, le=1000)
    max_replicas: int = Field(10, ge=1, le=1000)  # a typo of 10000 must not become a plan
    # requests per second one ready replica serves: with it, "short of capacity" is measured
    # (load against ready replicas) instead of guessed, and a scale-up is sized to the load
    capacity_rps_per_replica: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Scaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self


class DatabaseTarget(_Model):
    """The service's PostgreSQL, diagnosed and treated by database-issues."""

    dsn_secret: str
    deployment: str | None = Field(None, pattern=_DNS_LABEL)  # the Kubernetes deployment running it, if any
    connection_threshold: float = Field(0.8, gt=0, le=1)  # of usable connections (server, or a role's limit)
    long_query_seconds: float = Field(60.0, gt=0)
    idle_in_transaction_seconds: float = Field(30.0, gt=0)
    idle_seconds: float = Field(300.0, gt=0)  # idle sessions ended under connection pressure
    statement_timeout_ms: int = Field(5000, ge=100, le=60000)
    terminate_superusers: bool = False
    app_role: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")  # the application's role (drills act as it)
    drill_table: str = Field("orders", pattern=r"^[a-z_][a-z0-9_]{0,62}$")  # a table drills may lock
    _secret = field_validator("dsn_secret")(_check_secret_name)


class CacheTarget(_Model):
    url_secret: str
    prefix: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{2,100}$")
    clear: Literal["prefix", "flushdb"] = "prefix"  # FLUSHALL is never planned
    memory_threshold: float = Field(0.9, gt=0, le=1)
    _secret = field_validator("url_secret")(_check_secret_name)


class CircuitBreaker(_Model):
    """A switch the service reads: a ConfigMap key, or a feature-flag key in Redis."""

    configmap: str | None = Field(None, pattern=_DNS_LABEL)
    redis_url_secret: str | None = None
    key: str = Field(pattern=r"^[A-Za-z0-9_.:\-]{1,200}$")
    on_value: str = "on"

    @model_validator(mode="after")
    def _one_switch(self) -> "CircuitBreaker":
        if (self.configmap is None) == (self.redis_url_secret is None):
            raise ValueError("set exactly one of configmap or redis_url_secret")
        if self.redis_url_secret:
            _check_secret_name(self.redis_url_secret)
        return self


class ErrorBudget(_Model):
    threshold: float = Field(0.05, gt=0, lt=1)  # error rate above this is a spike; below it, recovered
    sample_seconds: float = Field(2.0, gt=0, le=60)  # /metrics is sampled twice this far apart
    scale_step: int = Field(2, ge=1)  # replicas added per scale-up, up to scaling.max_replicas


class SecretTarget(_Model):
    # `keys` in YAML; not the attribute name, because dict(model) would take it for a mapping's keys()
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    name: str = Field(pattern=_DNS_LABEL)
    data_keys: list[str] = Field(min_length=1, alias="keys")


class LoggingSwitch(_Model):
    configmap: str = Field(pattern=_DNS_LABEL)
    key: str = "log_level"
    level: str = "debug"


class SecurityTarget(_Model):
    secrets: list[SecretTarget] = []
    consumers: list[str] = []  # deployments restarted after a rotation
    logging: LoggingSwitch | None = None
    # How suspicious addresses are blocked (see config/example-production.yaml):
    #   ingress_denylist: ingress-nginx's denylist-source-range annotation on `ingress`, which
    #     sees the real client address;
    #   network_policy: a NetworkPolicy `block_policy`, only when no other policy selects the
    #     pods (policies add up: it would widen what they allow).
    block_strategy: Literal["ingress_denylist", "network_policy"] = "network_policy"
    ingress: str | None = Field(None, pattern=_DNS_LABEL)
    block_policy: str = Field("block-suspicious-ips", pattern=_DNS_LABEL)
    # how long containment stands before the watch asks about a block (it is never lifted
    # without a person) and turns a raised log level back (debug logs cost and may leak)
    block_hours: float = Field(72.0, gt=0, le=24 * 90)
    logging_hours: float = Field(6.0, gt=0, le=24 * 30)

    @model_validator(mode="after")
    def _ingress_named(self) -> "SecurityTarget":
        if self.block_strategy == "ingress_denylist" and not self.ingress:
            raise ValueError("block_strategy ingress_denylist needs `ingress`: the Ingress in front of the service")
        return self


class Dependency(_Model):
    """Something the service calls, as `/health` names it: probed directly (DNS, TCP, HTTP), so
    "down for everyone" is told from "failing only from this service"."""
    url: str = Field(pattern=r"^https?://")  # its own health endpoint


class ServiceConfig(_Model):
    base_url: str = Field(pattern=r"^https?://")
    ok_path: str = "/__ok"
    health_path: str = "/health"
    metrics_path: str = "/metrics"
    kubernetes: KubernetesTarget
    github: GitHubTarget
    rollback_strategy: Literal["github_workflow", "kubernetes_undo"] = "kubernetes_undo"
    scaling: Scaling = Scaling()
    errors: ErrorBudget = ErrorBudget()
    circuit_breaker: CircuitBreaker | None = None
    database: DatabaseTarget | None = None
    cache: CacheTarget | None = None
    security: SecurityTarget = SecurityTarget()
    dependencies: dict[str, Dependency] = {}  # by the name /health gives each check
    # the objective for one answer of its endpoints: slower is a finding ("slow", not "down")
    latency_slo_ms: float | None = Field(None, gt=0)

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def endpoints(self) -> list[str]:
        return [self.url(self.ok_path), self.url(self.health_path), self.url(self.metrics_path)]
