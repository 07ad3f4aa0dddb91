"""Environment configuration: YAML files validated by pydantic models.

`RUNBOOKS_CONFIG` names the file (default: `config/sandbox.yaml`). A file holds one or more
environments. `${VAR}` and `${VAR:-default}` are expanded from the process environment, and
relative paths are resolved against the file's folder. Secrets are never written here: a
`*_secret` field holds the *name* of a secret, resolved at run time from the environment
variable `RUNBOOKS_SECRET_<NAME>` or a Prefect Secret block of that name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from incidents.alerts import Route
from incidents.config_base import (
    _CHANNEL_ID,
    _DNS_LABEL,
    _ENV_REF,
    _REPO,
    DEFAULT_CONFIG,
    PROJECT_ROOT,
    SLACK_GROUP_ID,
    SLACK_USER_ID,
    ConfigError,
    _check_secret_name,
    _Model,
    secret_env_var,
)
from incidents.config_people import (
    PAGER_PREFIX,
    Contact,
    EscalationMatrix,
    Roles,
    SeverityPolicy,
    SlackIdentity,
)
from incidents.config_services import (
    CacheTarget,
    CircuitBreaker,
    DatabaseTarget,
    ErrorBudget,
    GitHubTarget,
    KubernetesTarget,
    LoggingSwitch,
    Scaling,
    SecretTarget,
    SecurityTarget,
    ServiceConfig,
)
from incidents.models import Severity

__all__ = [
    "CacheTarget",
    "CircuitBreaker",
    "ConfigError",
    "Contact",
    "DEFAULT_CONFIG",
    "DatabaseTarget",
    "ErrorBudget",
    "EscalationMatrix",
    "GitHubTarget",
    "KubernetesTarget",
    "LoggingSwitch",
    "PAGER_PREFIX",
    "PROJECT_ROOT",
    "Roles",
    "SLACK_GROUP_ID",
    "SLACK_USER_ID",
    "Scaling",
    "SecretTarget",
    "SecurityTarget",
    "ServiceConfig",
    "SeverityPolicy",
    "SlackIdentity",
    "secret_env_var",
]


class GitHubSettings(_Model):
    api_url: str = "https://api.github.com"
    token_secret: str
    incident_repo: str = Field(pattern=_REPO)
    _secret = field_validator("token_secret")(_check_secret_name)




class SlackSettings(_Model):
    """Where messages go. With a Slack app (`bot_token_secret` + `channel`) messages go through
    the Web API: one thread per incident, its parent kept current, Approve/Decline buttons.
    Without one, the incoming webhook(s) take flat messages, as before."""

    webhook_secret: str | None = None
    security_webhook_secret: str | None = None  # the security team's own channel
    api_url: str = Field("https://slack.com/api", pattern=r"^https?://")
    bot_token_secret: str | None = None  # xoxb-… of the app, by name
    channel: str | None = Field(None, pattern=_CHANNEL_ID)  # the incident channel's ID
    security_channel: str | None = Field(None, pattern=_CHANNEL_ID)  # the security team's channel's ID

    @field_validator("webhook_secret", "security_webhook_secret", "bot_token_secret")
    @classmethod
    def _secrets(cls, value: str | None) -> str | None:
        return _check_secret_name(value) if value else value

    @model_validator(mode="after")
    def _one_way_in(self) -> "SlackSettings":
        if bool(self.bot_token_secret) != bool(self.channel):
            raise ValueError("a Slack app needs both bot_token_secret and channel (the channel's ID, e.g. C0123ABCD)")
        if not self.bot_token_secret and not self.webhook_secret:
            raise ValueError("set webhook_secret (an incoming webhook) or bot_token_secret and channel (a Slack app)")
        return self

    @property
    def app(self) -> bool:
        return self.bot_token_secret is not None


class PrometheusSettings(_Model):
    url: str = Field(pattern=r"^https?://")
    # {service} is replaced by the service name; the result is an error ratio (0..1)
    error_rate_query: str = ('sum(rate(http_requests_total{{service="{service}",code=~"5.."}}[1m]))'
                             ' / sum(rate(http_requests_total{{service="{service}"}}[1m]))')
    # {service} and {quantile} (0.5, 0.99) are replaced; the result is seconds. Used for services
    # with a latency_slo_ms.
    latency_query: str = ('histogram_quantile({quantile}, sum(rate(http_request_duration_seconds_bucket'
                          '{{service="{service}"}}[1m])) by (le))')
    # {namespace} is replaced; one series per PersistentVolumeClaim, the share of it used (0..1),
    # from the kubelet's volume stats
    volume_query: str = ('max by (persistentvolumeclaim) (kubelet_volume_stats_used_bytes{{namespace="{namespace}"}}'
                         ' / kubelet_volume_stats_capacity_bytes{{namespace="{namespace}"}})')


class KubernetesSettings(_Model):
    kubeconfig: str | None = None
    context: str | None = None
    timeout_seconds: float = Field(10.0, gt=0, le=120)


_SEVERITY = Literal["P0", "P1", "P2", "P3"]


class Approver(_Model):
    """A person who may approve, with a credential of their own (a secret, by name)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,99}$")
    credential_secret: str
    severities: list[_SEVERITY] = ["P0", "P1", "P2", "P3"]
    # who this approver is in Slack: a press of Approve/Decline by this member is their verified answer
    slack_user: str | None = Field(None, pattern=SLACK_USER_ID)
    _secret = field_validator("credential_secret")(_check_secret_name)


class ApprovalSettings(_Model):
    timeout_seconds: int = Field(900, ge=1, le=7 * 24 * 3600)
    poll_seconds: float = Field(1.0, gt=0, le=60)
    # Verified approvals: the approval page (POST /approvals/<id> on the intake) checks the
    # approver's own credential. `require_verified`: a Resume without it (e.g. from the Prefect
    # UI, which records no identity) is ignored and the run keeps waiting. `four_eyes`: these
    # severities need two different verified approvers.
    approvers: list[Approver] = []
    require_verified: bool = False
    four_eyes: list[_SEVERITY] = []
    page_url: str = Field("http://127.0.0.1:8787", pattern=r"^https?://")

    @model_validator(mode="after")
    def _enough_approvers(self) -> "ApprovalSettings":
        names = [a.name.lower() for a in self.approvers]
        if len(set(names)) != len(names):
            raise ValueError("approver names must be unique, whatever their case (alice and Alice are one person)")
        secrets = [a.credential_secret for a in self.approvers]
        if len(set(secrets)) != len(secrets):
            raise ValueError("two approvers share a credential_secret: one credential would count as two approvers")
        members = [a.slack_user for a in self.approvers if a.slack_user]
        if len(set(members)) != len(members):
            raise ValueError("two approvers share a slack_user: a button press must name one person")
        if self.require_verified and not self.approvers:
            raise ValueError("require_verified needs at least one approver")
        for severity in self.four_eyes:
            if sum(severity in a.severities for a in self.approvers) < 2:
                raise ValueError(f"four_eyes for {severity} needs at least two approvers allowed to approve {severity}")
        return self

    def approver(self, name: str) -> Approver | None:
        return next((a for a in self.approvers if a.name == name), None)

    def slack_approver(self, slack_user: str) -> Approver | None:
        return next((a for a in self.approvers if slack_user and a.slack_user == slack_user), None)

    def needed(self, severity: Severity | str) -> int:
        """How many different verified approvers a plan of this severity needs (0: the Resume form suffices)."""
        value = getattr(severity, "value", severity)
        if value in self.four_eyes:
            return 2
        return 1 if self.require_verified else 0


class Timeouts(_Model):
    probe_seconds: float = Field(5.0, gt=0, le=60)
    http_seconds: float = Field(10.0, gt=0, le=120)
    verify_seconds: float = Field(180.0, gt=0, le=3600)
    verify_poll_seconds: float = Field(2.0, gt=0, le=60)
    workflow_seconds: float = Field(300.0, gt=0, le=3600)
    recent_deploy_hours: float = Field(24.0, gt=0, le=24 * 14)
    # transient failures (connect errors, 429 with Retry-After, 5xx) of GitHub, Slack and Kubernetes
    retry_attempts: int = Field(4, ge=1, le=10)
    retry_backoff_seconds: float = Field(0.5, ge=0, le=30)  # doubled per attempt
    # all checks pass on arrival: look again after this long before closing as "no impact found"
    confirm_seconds: float = Field(30.0, ge=0, le=3600)
    # a bad release shows within minutes of going live: a failure that began later than this
    # after a revision's rollout (while the revision served cleanly) is not blamed on it
    release_window_seconds: float = Field(600.0, gt=0, le=24 * 3600)


class PagerDutyService(_Model):
    routing_key_secret: str  # the Events API v2 integration key of a PagerDuty service, by name
    _secret = field_validator("routing_key_secret")(_check_secret_name)


class PagerDutySettings(_Model):
    """PagerDuty Events API v2: escalation levels name `pagerduty.<service>` to page through it.
    PagerDuty's webhooks (v3) come back to the intake (`POST /pagerduty/webhooks`), verified
    with RUNBOOKS_PAGERDUTY_WEBHOOK_SECRET."""

    events_url: str = Field("https://events.pagerduty.com", pattern=r"^https?://")
    services: dict[str, PagerDutyService] = Field(min_length=1)

    @field_validator("services")
    @classmethod
    def _names(cls, value: dict[str, PagerDutyService]) -> dict[str, PagerDutyService]:
        for name in value:
            if not re.match(r"^[a-z0-9][a-z0-9-]{0,62}$", name):
                raise ValueError(f"PagerDuty service name {name!r}: lower-case letters, digits and '-'")
        return value


class PostIncidentSettings(_Model):
    form_timeout_seconds: int = Field(7 * 24 * 3600, ge=60)  # how long a post-incident run waits for its form
    postmortem_due_days: float = Field(7, gt=0, le=90)        # the playbook's "within 1 week"
    reminder_hours: float = Field(24, gt=0, le=24 * 30)        # overdue post-mortems / action items: remind this often
    action_item_labels: list[str] = ["action-item"]


class EnvironmentConfig(_Model):
    production: bool = False
    drills_allowed: bool = False
    prefect_ui_url: str = "http://127.0.0.1:4200"
    github: GitHubSettings
    slack: SlackSettings
    kubernetes: KubernetesSettings = KubernetesSettings()
    approval: ApprovalSettings = ApprovalSettings()
    timeouts: Timeouts = Timeouts()
    roles: Roles = Roles()
    escalation: EscalationMatrix = EscalationMatrix()
    post_incident: PostIncidentSettings = PostIncidentSettings()
    prometheus: PrometheusSettings | None = None
    pagerduty: PagerDutySettings | None = None
    services: dict[str, ServiceConfig]

    @model_validator(mode="after")
    def _pagers_known(self) -> "EnvironmentConfig":
        known = set(self.pagerduty.services) if self.pagerduty else set()
        for severity in ("P0", "P1", "P2", "P3"):
            policy = self.escalation.policy(severity)
            for level in range(len(policy.levels)):
                missing = [p for p in policy.pagers(level) if p not in known]
                if missing:
                    raise ValueError(f"escalation.{severity} pages pagerduty.{missing[0]}, which is not in "
                                     "pagerduty.services")
        return self

    @field_validator("services")
    @classmethod
    def _service_names(cls, value: dict[str, ServiceConfig]) -> dict[str, ServiceConfig]:
        for name in value:
            if not re.match(_DNS_LABEL, name):
                raise ValueError(f"service name {name!r} must be lower-case letters, digits and '-'")
        if not value:
            raise ValueError("at least one service is needed")
        return value

    def service(self, name: str) -> ServiceConfig:
        if name not in self.services:
            known = ", ".join(sorted(self.services))
            raise ConfigError(f"unknown service {name!r}; this environment knows: {known}")
        return self.services[name]


class IntakeSettings(_Model):
    """How the alert intake tells one alert from another and one outage from another."""
    # labels left out of an alert's identity: an HA pair of Prometheus replicas sends the same
    # alert twice (Alertmanager's own HA de-duplication drops these labels the same way)
    ignore_labels: list[str] = Field(default_factory=lambda: ["replica", "prometheus_replica", "prometheus"])
    # a resolved alert withdraws a pending approval only after this long without firing again
    resolve_grace_seconds: float = Field(300.0, ge=0, le=24 * 3600)


class ConfigFile(_Model):
    environments: dict[str, EnvironmentConfig]
    routing: list[Route] = []  # alert label matchers -> scenario runs (see incidents/alerts.py)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)


def _expand(text: str) -> str:
    def sub(match: re.Match[str]) -> str:
        value = os.environ.get(match[1])
        if value is None:
            if match[2] is None:
                raise ConfigError(f"environment variable {match[1]} is not set and has no default")
            return match[2]
        return value

    return _ENV_REF.sub(sub, text)


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


# libyaml's safe loader where PyYAML was built with it (several times faster: the config is
# read again by every run step, so an edit takes effect without a restart)
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def config_path() -> Path:
    return Path(os.environ.get("RUNBOOKS_CONFIG") or DEFAULT_CONFIG)


# Parsed configs by what they were parsed from: the file is read and its variables expanded on
# every call (an edit or a changed variable takes effect at once), but the same text is parsed
# and validated once. The intake reads the config for every alert and a run for every step; with
# the fault matrix driving runs in one process, parsing the same text again was 11 % of its CPU.
_PARSED: dict[tuple[str, str, str], ConfigFile] = {}
_PARSED_KEPT = 8


def load_config(path: Path | str | None = None) -> ConfigFile:
    path = Path(path) if path else config_path()
    try:
        text = _expand(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    key = (os.getcwd(), str(path), text)  # a relative kubeconfig resolves against the file's directory
    parsed = _PARSED.get(key)
    if parsed is None:
        parsed = _parse(path, text)
        if len(_PARSED) >= _PARSED_KEPT:
            _PARSED.clear()
        _PARSED[key] = parsed
    return parsed


def _parse(path: Path, text: str) -> ConfigFile:
    try:
        raw = yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'environments'")
    try:
        parsed = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}", tuple(tuple(e["loc"]) for e in exc.errors())) from None
    envs = {}
    for name, env in parsed.environments.items():
        kube = env.kubernetes
        if kube.kubeconfig and not Path(kube.kubeconfig).is_absolute():
            kube = kube.model_copy(update={"kubeconfig": str((path.parent / kube.kubeconfig).resolve())})
        envs[name] = env.model_copy(update={"kubernetes": kube})
    return ConfigFile(environments=envs, routing=parsed.routing, intake=parsed.intake)


def load_environment(environment: str, path: Path | str | None = None) -> EnvironmentConfig:
    config = load_config(path)
    if environment not in config.environments:
        known = ", ".join(sorted(config.environments))
        raise ConfigError(f"{path or config_path()}: environment {environment!r} is not configured (known: {known})")
    return config.environments[environment]
