"""What the alert intake does through the incident store and Slack (run in a worker thread):
open or find the incident of an alert's outage, note a resolved alert, and post notices."""

from __future__ import annotations

import logging

from incidents import templates
from incidents.alerts import DEFAULT_SEVERITY, Alert, AlertParameter, RunRequest
from incidents.models import Incident, Severity
from incidents.vocabulary import DetectedBy
from tasks.context import RunContext
from tasks.correlation import alert_resolved, detected

log = logging.getLogger("runbooks.intake")


def notify_channel(environment: str, text: str) -> None:
    """A notice to the incident channel of `environment`, else of the first configured one."""
    from incidents.config import ConfigError, load_config
    from integrations.errors import IntegrationError
    from tasks.context import SecretNotFound
    from tasks.notify import post_notice

    try:
        envs = load_config().environments
        post_notice(envs.get(environment) or next(iter(envs.values())), text)
    except (ConfigError, IntegrationError, SecretNotFound, StopIteration) as exc:
        log.warning("notice %r not posted to Slack: %s", text.splitlines()[0], exc)


def notify_unmatched(alert: Alert) -> None:
    """Reported once: to the incident channel of the environment the alert names, if any."""
    labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    notify_channel(alert.labels.get("environment", ""),
                    f"⚠️ UNROUTED ALERT\n{templates.slack_text(alert.labels.get('alertname', 'unnamed'))} matched no "
                    f"routing rule; labels: {templates.slack_text(labels, 500)}")


def known_services() -> dict[str, set[str]]:
    from incidents.config import load_config

    return {name: set(env.services) for name, env in load_config().environments.items()}


def severity_of(request: RunRequest) -> Severity:
    return Severity(request.severity) if request.severity else DEFAULT_SEVERITY[request.scenario]


def open_or_find(alert: Alert, request: RunRequest, parameter: AlertParameter) -> tuple[Incident, RunContext]:
    """The open incident for the alert's correlation key: opened here when there is none."""
    ctx = RunContext.load(request.environment, request.service)
    severity = severity_of(request)
    summary = alert.annotations.get("summary") or f"{alert.labels.get('alertname', 'alert')} for {request.service}"
    incident = ctx.store().open_incident(
        dedup_key=request.correlation_key, scenario=request.scenario, service=request.service,
        environment=request.environment, severity=severity,
        title=templates.issue_title_text(request.service, severity, summary),
        detected_by=DetectedBy.SLACK if alert.source == "slack" else DetectedBy.ALERT, flow_run_id=None,
        alert=parameter.redacted(), started_at=parameter.started)
    if incident.created:
        detected(ctx, incident, alert.source, f"{request.scenario}: {summary}", parameter)
    return incident, ctx


def note_resolved(alert: Alert, request: RunRequest, grace_seconds: float) -> bool:
    ctx = RunContext.load(request.environment, request.service)
    incident = ctx.store().open_for_key(request.correlation_key)
    if incident is None:
        return False
    return alert_resolved(ctx, incident, alert.as_parameter(), grace_seconds)
