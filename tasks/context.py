"""What every task of a run needs: the environment's config, the service, and clients built
from them with secrets resolved at the last moment (never stored, never logged), through the
run's wiring (the real clients, or a test's fakes)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol, TypeVar, cast

from incidents.config import EnvironmentConfig, ServiceConfig, load_environment, secret_env_var
from incidents.config_services import CacheTarget, CircuitBreaker, DatabaseTarget
from incidents.errors import RunbookError
from incidents.followups import RunbookStore
from incidents.redaction import remember_secret
from incidents.store_protocol import Records
from integrations.cache import Cache, CacheClient
from integrations.github import GitHub, GitHubClient
from integrations.http import RetryPolicy
from integrations.kubernetes import KubernetesClient
from integrations.kubernetes_protocol import Kubernetes
from integrations.pagerduty import Pager, PagerDutyEvents
from integrations.postgres import Postgres, PostgresClient
from integrations.prometheus import Prometheus, PrometheusClient
from integrations.slack import SlackApp, SlackThreads, SlackWebhook


class SecretNotFound(RunbookError):
    pass


class NotConfigured(SecretNotFound):
    """The service's config has no block for what a step needs (its database, its cache, its
    circuit breaker): reported like a missing secret, as a check that could not run."""


T = TypeVar("T")


def _configured(block: T | None, service: str, what: str) -> T:
    if block is None:
        raise NotConfigured(f"service {service!r} has no {what} configured")
    return block


def resolve_secret(name: str) -> str:
    """The environment variable RUNBOOKS_SECRET_<NAME> wins; else the Prefect Secret block `name`."""
    value = os.environ.get(secret_env_var(name))
    if value:
        remember_secret(value)
        return value
    try:
        from prefect.blocks.system import Secret

        secret = cast(Secret, Secret.load(name, validate=False))  # sync: Prefect's load is sync-compatible
        value = secret.get()
    except Exception as exc:  # noqa: BLE001 - block missing, server down: the message says which secret
        raise SecretNotFound(f"secret {name!r} not found: set {secret_env_var(name)} or create a Prefect "
                             f"Secret block named {name!r} ({type(exc).__name__})") from None
    value = value if isinstance(value, str) else str(value)
    remember_secret(value)
    return value


class Wiring(Protocol):
    """How a run reaches what it checks and changes: one factory per client, each called when
    the client is needed (secrets resolved then). `ProductionWiring` is the one place the real
    clients are built; a test hands `RunContext` a wiring of in-memory fakes instead."""

    def store(self) -> Records: ...

    def kubernetes(self, ctx: RunContext) -> Kubernetes: ...

    def postgres(self, ctx: RunContext) -> Postgres: ...

    def cache(self, ctx: RunContext, url_secret: str) -> Cache: ...

    def prometheus(self, ctx: RunContext) -> Prometheus: ...

    def github(self, ctx: RunContext) -> GitHub: ...

    def slack(self, ctx: RunContext, webhook_secret: str) -> SlackWebhook: ...

    def slack_app(self, ctx: RunContext) -> SlackThreads: ...

    def pagerduty(self, ctx: RunContext) -> Pager: ...


class ProductionWiring:
    """The real clients, with the environment's timeouts and the project's retry rule."""

    def store(self) -> RunbookStore:
        return RunbookStore()

    def kubernetes(self, ctx: RunContext) -> KubernetesClient:
        kube = ctx.config.kubernetes
        return KubernetesClient(kube.kubeconfig, kube.context, timeout=kube.timeout_seconds, retry=ctx.retry(3))

    def postgres(self, ctx: RunContext) -> PostgresClient:
        db = ctx.database_target()
        return PostgresClient(resolve_secret(db.dsn_secret), statement_timeout_ms=db.statement_timeout_ms)

    def cache(self, ctx: RunContext, url_secret: str) -> CacheClient:
        return CacheClient(resolve_secret(url_secret))

    def prometheus(self, ctx: RunContext) -> PrometheusClient:
        prom = ctx.config.prometheus
        if prom is None:
            raise ValueError(f"environment {ctx.environment!r} has no prometheus settings")
        return PrometheusClient(prom.url, timeout=ctx.config.timeouts.probe_seconds)

    def github(self, ctx: RunContext) -> GitHubClient:
        return GitHubClient(ctx.config.github.api_url, resolve_secret(ctx.config.github.token_secret),
                            timeout=ctx.config.timeouts.http_seconds, retry=ctx.retry())

    def slack(self, ctx: RunContext, webhook_secret: str) -> SlackWebhook:
        # a notification never waits long: at most 3 attempts, within the HTTP timeout each
        return SlackWebhook(resolve_secret(webhook_secret), timeout=min(5.0, ctx.config.timeouts.http_seconds),
                            retry=ctx.retry(3))

    def slack_app(self, ctx: RunContext) -> SlackApp:
        slack = ctx.config.slack
        return SlackApp(slack.api_url, resolve_secret(slack.bot_token_secret or ""),
                        timeout=min(5.0, ctx.config.timeouts.http_seconds), retry=ctx.retry(3))

    def pagerduty(self, ctx: RunContext) -> PagerDutyEvents:
        settings = ctx.config.pagerduty
        if settings is None:
            raise ValueError(f"environment {ctx.environment!r} has no pagerduty settings")
        return PagerDutyEvents(settings.events_url, timeout=min(5.0, ctx.config.timeouts.http_seconds),
                               retry=ctx.retry(3))


PRODUCTION = ProductionWiring()


@dataclass(frozen=True)
class RunContext:
    environment: str
    service_name: str
    config: EnvironmentConfig
    wiring: Wiring = field(default=PRODUCTION, compare=False, repr=False)

    @classmethod
    def load(cls, environment: str, service: str, wiring: Wiring = PRODUCTION) -> "RunContext":
        config = load_environment(environment)
        config.service(service)  # an unknown service fails here, before anything happens
        return cls(environment, service, config, wiring)

    @property
    def service(self) -> ServiceConfig:
        return self.config.services[self.service_name]

    def database_target(self) -> DatabaseTarget:
        return _configured(self.service.database, self.service_name, "database")

    def cache_target(self) -> CacheTarget:
        return _configured(self.service.cache, self.service_name, "cache")

    def circuit_breaker(self) -> CircuitBreaker:
        return _configured(self.service.circuit_breaker, self.service_name, "circuit_breaker")

    def retry(self, at_most: int = 10) -> RetryPolicy:
        timeouts = self.config.timeouts
        return RetryPolicy(attempts=min(at_most, timeouts.retry_attempts), backoff=timeouts.retry_backoff_seconds)

    def store(self) -> Records:
        return self.wiring.store()

    def kubernetes(self) -> Kubernetes:
        return self.wiring.kubernetes(self)

    def postgres(self) -> Postgres:
        return self.wiring.postgres(self)

    def cache(self, url_secret: str) -> Cache:
        return self.wiring.cache(self, url_secret)

    def prometheus(self) -> Prometheus:
        return self.wiring.prometheus(self)

    def github(self) -> GitHub:
        return self.wiring.github(self)

    def slack(self, webhook_secret: str | None = None) -> SlackWebhook:
        return self.wiring.slack(self, webhook_secret or self.config.slack.webhook_secret or "")

    def slack_app(self) -> SlackThreads:
        return self.wiring.slack_app(self)

    def pagerduty(self) -> Pager:
        return self.wiring.pagerduty(self)

    def run_url(self, flow_run_id: str | None) -> str | None:
        return f"{self.config.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if flow_run_id else None


@dataclass(frozen=True)
class Scope:
    """An environment's incidents as the watch and a person's command reach them: the store and
    each incident's run context, both through one wiring (a test hands in fakes)."""

    environment: str
    config: EnvironmentConfig
    wiring: Wiring = field(default=PRODUCTION, compare=False, repr=False)

    @classmethod
    def load(cls, environment: str, wiring: Wiring = PRODUCTION) -> Scope:
        return cls(environment, load_environment(environment), wiring)

    def store(self) -> Records:
        return self.wiring.store()

    def ctx(self, service: str) -> RunContext:
        """The run context of one of the environment's services."""
        return RunContext(self.environment, service, self.config, self.wiring)
