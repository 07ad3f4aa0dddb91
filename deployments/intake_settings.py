"""The alert intake's settings: what it listens for and where it reaches Redis and Prefect,
read from the environment and the config by `settings_from_env`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from incidents.alerts import Route


@dataclass
class IntakeSettings:
    token: str
    routes: list[Route]
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    grafana_secret: str | None = None
    grafana_use_timestamp: bool = False
    max_body_bytes: int = 1 << 20
    dedup_seconds: int = 7 * 24 * 3600
    notify_unmatched: bool = True
    deployment_ids: dict[str, str] = field(default_factory=dict)
    ignore_labels: tuple[str, ...] = ("replica", "prometheus_replica", "prometheus")
    resolve_grace_seconds: float = 300.0
    # environment -> its services, from the config (None: read the config when the app starts)
    known_services: dict[str, set[str]] | None = None
    claim_seconds: int = 60  # how long a claim that has not become a run holds off a concurrent delivery


def settings_from_env() -> IntakeSettings:
    from incidents.config import load_config

    token = os.environ.get("RUNBOOKS_ALERT_TOKEN")
    if not token:
        raise SystemExit("RUNBOOKS_ALERT_TOKEN is not set: the intake refuses to run without a token")
    config = load_config()
    return IntakeSettings(
        token=token, routes=list(config.routing), ignore_labels=tuple(config.intake.ignore_labels),
        resolve_grace_seconds=config.intake.resolve_grace_seconds,
        redis_url=os.environ.get("RUNBOOKS_REDIS_URL", "redis://127.0.0.1:6379/0"),
        prefect_api_url=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"),
        grafana_secret=os.environ.get("RUNBOOKS_GRAFANA_HMAC_SECRET") or None,
        grafana_use_timestamp=os.environ.get("RUNBOOKS_GRAFANA_SIGNATURE_TIMESTAMP", "") in ("1", "true", "yes"))
