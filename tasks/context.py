"""What every task of a run needs: the environment's config, the service, and clients built
from them with secrets resolved at the last moment (never stored, never logged)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from incidents.config import EnvironmentConfig, ServiceConfig, load_environment, secret_env_var
from incidents.redaction import remember_secret
from incidents.store import IncidentStore
from integrations.github import GitHubClient
from integrations.http import RetryPolicy
from integrations.kubernetes import KubernetesClient
from integrations.pagerduty import PagerDutyEvents
from integrations.slack import SlackApp, SlackWebhook


class SecretNotFound(LookupError):
    pass


def resolve_secret(name: str) -> str:
    """The environment variable RUNBOOKS_SECRET_<NAME> wins; else the Prefect Secret block `name`."""
    value = os.environ.get(secret_env_var(name))
    if value:
        remember_secret(value)
        return value
    try:
        from prefect.blocks.system import Secret

        secret = Secret.load(name, validate=False)
        value = secret.get()
    except Exception as exc:  # noqa: BLE001 - block missing, server down: the message says which secret
        raise SecretNotFound(f"secret {name!r} not found: set {secret_env_var(name)} or create a Prefect "
                             f"Secret block named {name!r} ({type(exc).__name__})") from None
    value = value if isinstance(value, str) else str(value)
    remember_secret(value)
    return value


@dataclass(frozen=True)
class RunContext:
    environment: str
    service_name: str
    config: EnvironmentConfig

    @classmethod
    def load(cls, environment: str, service: str) -> "RunContext":
        config = load_environment(environment)
        config.service(service)  # an unknown service fails here, before anything happens
        return cls(environment, service, config)

    @property
    def service(self) -> ServiceConfig:
        return self.config.services[self.service_name]

    def store(self) -> IncidentStore:
        return IncidentStore()

    def retry(self, at_most: int = 10) -> RetryPolicy:
        timeouts = self.config.timeouts
        return RetryPolicy(attempts=min(at_most, timeouts.retry_attempts), backoff=timeouts.retry_backoff_seconds)

    def github(self) -> GitHubClient:
        return GitHubClient(self.config.github.api_url, resolve_secret(self.config.github.token_secret),
                            timeout=self.config.timeouts.http_seconds, retry=self.retry())

    def slack(self, webhook_secret: str | None = None) -> SlackWebhook:
        # a notification never waits long: at most 3 attempts, within the HTTP timeout each
        return SlackWebhook(resolve_secret(webhook_secret or self.config.slack.webhook_secret or ""),
                            timeout=min(5.0, self.config.timeouts.http_seconds), retry=self.retry(3))

    def slack_app(self) -> SlackApp:
        slack = self.config.slack
        return SlackApp(slack.api_url, resolve_secret(slack.bot_token_secret or ""),
                        timeout=min(5.0, self.config.timeouts.http_seconds), retry=self.retry(3))

    def pagerduty(self) -> PagerDutyEvents:
        settings = self.config.pagerduty
        if settings is None:
            raise ValueError(f"environment {self.environment!r} has no pagerduty settings")
        return PagerDutyEvents(settings.events_url, timeout=min(5.0, self.config.timeouts.http_seconds),
                               retry=self.retry(3))

    def kubernetes(self) -> KubernetesClient:
        kube = self.config.kubernetes
        return KubernetesClient(kube.kubeconfig, kube.context, timeout=kube.timeout_seconds, retry=self.retry(3))

    def run_url(self, flow_run_id: str | None) -> str | None:
        return f"{self.config.prefect_ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if flow_run_id else None
