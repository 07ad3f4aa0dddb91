"""In-memory stand-ins for what a run reaches, handed to RunContext through its wiring, so
the rules that read targets (re-checks, remedies) run in the unit tier with no services.
They hold state like the real thing and fail the way it does (a missing deployment raises
the client's own error); they are for tests only, never shipped."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from integrations.errors import IntegrationError
from integrations.postgres import Session
from tasks.context import RunContext


def deployment(revision: int, image: str, replicas: int = 3, paused: bool = False) -> dict[str, Any]:
    """A Deployment object as the API returns it, with the revision annotation kubectl reads."""
    return {"metadata": {"annotations": {"deployment.kubernetes.io/revision": str(revision)}, "generation": 1},
            "spec": {"replicas": replicas, "paused": paused,
                     "template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
            "status": {"observedGeneration": 1}}


class FakeKubernetes:
    """Deployments and HPAs by (namespace, name); the calls the re-checks and remedies make."""

    def __init__(self) -> None:
        self.deployments: dict[tuple[str, str], dict[str, Any]] = {}
        self.autoscalers: dict[tuple[str, str], dict[str, Any]] = {}  # by the deployment they scale
        self.calls: list[str] = []

    def __enter__(self) -> FakeKubernetes:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(f"get deployment {namespace}/{name}")
        if (namespace, name) not in self.deployments:
            raise IntegrationError(f"Kubernetes read deployment {namespace}/{name}", "HTTP 404: not found", status=404)
        return copy.deepcopy(self.deployments[namespace, name])

    def autoscaler_of(self, namespace: str, deployment_name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.autoscalers.get((namespace, deployment_name)))

    def scale(self, namespace: str, name: str, replicas: int) -> tuple[int, int]:
        self.calls.append(f"scale {namespace}/{name} {replicas}")
        spec = self.deployments[namespace, name]["spec"]
        before, spec["replicas"] = spec["replicas"], replicas
        return before, replicas


@dataclass
class FakePostgres:
    sessions_now: list[Session] = field(default_factory=list)

    def sessions(self) -> list[Session]:
        return list(self.sessions_now)


def session(pid: int, state: str, seconds: float, started: datetime, query_seconds: float | None = None) -> Session:
    return Session(pid=pid, role="sandbox_app", superuser=False, state=state, backend_start=started,
                   seconds_in_state=seconds, seconds_in_xact=seconds, seconds_in_query=query_seconds,
                   wait_event_type=None, blocked_by=(), query="LOCK orders")


class FakeCache:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def __enter__(self) -> FakeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def count_prefix(self, prefix: str) -> int:
        return sum(key.startswith(prefix) for key in self.values)


@dataclass
class FakeWiring:
    """A run's wiring of fakes; a client the test did not give fails as unreachable would."""

    kube: FakeKubernetes = field(default_factory=FakeKubernetes)
    postgres_: FakePostgres = field(default_factory=FakePostgres)
    caches: dict[str, FakeCache] = field(default_factory=dict)  # by the secret naming its URL

    def store(self) -> Any:
        raise IntegrationError("incident store", "not part of this test")

    def kubernetes(self, ctx: RunContext) -> Any:
        return self.kube

    def postgres(self, ctx: RunContext) -> Any:
        return self.postgres_

    def cache(self, ctx: RunContext, url_secret: str) -> Any:
        if url_secret not in self.caches:
            raise IntegrationError(f"Redis {url_secret}", "connection refused")
        return self.caches[url_secret]

    def _absent(self, ctx: RunContext, *args: Any) -> Any:
        raise IntegrationError("client", "not part of this test")

    prometheus = github = slack = slack_app = pagerduty = _absent


def context(wiring: FakeWiring, service: str = "api") -> RunContext:
    return RunContext.load("sandbox", service, wiring)


def ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)
