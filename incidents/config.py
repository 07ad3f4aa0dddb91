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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from incidents.alerts import Route
from incidents.models import Severity

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config" / "sandbox.yaml"
_SECRET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_REPO = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """An invalid config file: says which file, which field and why."""


def secret_env_var(name: str) -> str:
    return "RUNBOOKS_SECRET_" + name.upper().replace("-", "_")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_secret_name(value: str) -> str:
    if not _SECRET_NAME.match(value):
        raise ValueError("must be the name of a secret (lower-case letters, digits, '-'), not the secret itself; "
                         "put the value in a Prefect Secret block or the environment variable "
                         f"{secret_env_var('<name>')}")
    return value


class GitHubSettings(_Model):
    api_url: str = "https://api.github.com"
    token_secret: str
    incident_repo: str = Field(pattern=_REPO)
    _secret = field_validator("token_secret")(_check_secret_name)


_CHANNEL_ID = r"^[CGD][A-Z0-9]{2,20}$"  # a Slack conversation ID, e.g. C0123ABCD (not "#incidents")
SLACK_USER_ID = r"^[UW][A-Z0-9]{2,20}$"   # a Slack member ID: U… or, on Enterprise Grid, W…
SLACK_GROUP_ID = r"^S[A-Z0-9]{2,20}$"     # a Slack user group (subteam) ID


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
        names = [a.name for a in self.approvers]
        if len(set(names)) != len(names):
            raise ValueError("approver names must be unique")
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


_HANDLE = r"^@?[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,99})?$"  # @user or @org/team


class Contact(_Model):
    """A person (or rota) to page, with a backup; a plain handle in YAML means no backup."""

    primary: str = Field(pattern=_HANDLE)
    backup: str | None = Field(None, pattern=_HANDLE)

    @model_validator(mode="before")
    @classmethod
    def _from_handle(cls, value: Any) -> Any:
        return {"primary": value} if isinstance(value, str) else value

    @property
    def handles(self) -> list[str]:
        return [self.primary] + ([self.backup] if self.backup and self.backup != self.primary else [])


class SlackIdentity(_Model):
    """Who a handle is in Slack: a member, a user group, or both. Slack notifies only for
    mentions written with these IDs (`<@U…>`, `<!subteam^S…>`); "@name" in text rings nobody."""

    user: str | None = Field(None, pattern=SLACK_USER_ID)
    group: str | None = Field(None, pattern=SLACK_GROUP_ID)

    @model_validator(mode="after")
    def _something(self) -> "SlackIdentity":
        if not self.user and not self.group:
            raise ValueError("give user (a member ID, U…) and/or group (a user group ID, S…)")
        return self

    def mention(self) -> str:
        return " ".join(
            ([f"<@{self.user}>"] if self.user else []) + ([f"<!subteam^{self.group}>"] if self.group else [])
        )


def _contact(handle: str = "@mpcstudy") -> Contact:
    return Contact(primary=handle, backup=handle)


class Roles(_Model):
    """The playbook's Incident Roles and Emergency Contacts (its author used one placeholder
    for all). `team` lists everyone "all team members" means for a P0; the roles and contacts
    are always part of it."""

    incident_commander: str = Field("@mpcstudy", pattern=_HANDLE)
    communications: str = Field("@mpcstudy", pattern=_HANDLE)
    technical_owner: str = Field("@mpcstudy", pattern=_HANDLE)
    documentation: str = Field("@mpcstudy", pattern=_HANDLE)
    on_call: Contact = _contact()
    team_lead: Contact = _contact()
    security: Contact = _contact()
    infrastructure: Contact = _contact()
    team: list[str] = []
    # display handle -> Slack IDs, e.g. "@oncall-ola": {user: U0123ABCD}; a handle without an
    # entry is shown as text and notifies nobody
    slack_ids: dict[str, SlackIdentity] = {}

    @model_validator(mode="after")
    def _known_handles(self) -> "Roles":
        people = set(self.resolve("team"))
        unknown = sorted(h for h in self.slack_ids if h not in people)
        if unknown:
            raise ValueError(f"slack_ids names {', '.join(unknown)}, who is not in roles (check the spelling)")
        return self

    def mention(self, handle: str) -> str:
        """Slack's notifying syntax for a handle with IDs; the handle as text otherwise."""
        identity = self.slack_ids.get(handle)
        return identity.mention() if identity else handle

    def mentions(self, handles: list[str]) -> list[str]:
        return [self.mention(h) for h in handles]

    @field_validator("team")
    @classmethod
    def _team_handles(cls, value: list[str]) -> list[str]:
        for handle in value:
            if not re.match(_HANDLE, handle):
                raise ValueError(f"{handle!r} is not a handle (letters, digits, '_', '.', '-', optional leading @)")
        return value

    def resolve(self, reference: str) -> list[str]:
        """Handles for a reference used in escalation levels: a role or contact name
        (`on_call`), a contact's backup (`on_call.backup`), or `team` (everyone)."""
        name, _, part = reference.partition(".")
        if name == "pagerduty":
            return []  # a pager, not a person: see SeverityPolicy.pagers
        if name == "team":
            people = [self.incident_commander, self.communications, self.technical_owner, self.documentation]
            for contact in (self.on_call, self.team_lead, self.security, self.infrastructure):
                people += contact.handles
            return list(dict.fromkeys(people + self.team))
        value = getattr(self, name)
        if isinstance(value, Contact):
            return [value.backup or value.primary] if part == "backup" else [value.primary]
        return [value]

    def table(self) -> list[tuple[str, str, str]]:
        """(role, contact, backup) rows, as the playbook's role and contact tables show them."""
        rows = [(n.replace("_", " ").title(), getattr(self, n), "") for n in
                ("incident_commander", "communications", "technical_owner", "documentation")]
        for n in ("on_call", "team_lead", "security", "infrastructure"):
            contact = getattr(self, n)
            rows.append((n.replace("_", " ").title(), contact.primary, contact.backup or ""))
        return rows


_ROLE_REFERENCE = re.compile(r"^(team|incident_commander|communications|technical_owner|documentation|"
                             r"(on_call|team_lead|security|infrastructure)(\.backup)?|pagerduty\.[a-z0-9][a-z0-9-]{0,62})$")
PAGER_PREFIX = "pagerduty."


class SeverityPolicy(_Model):
    """One row of the Escalation Matrix. `levels[0]` is notified when the incident opens; each
    response time that passes without an acknowledgment escalates to the next level."""

    response_minutes: float = Field(gt=0, le=7 * 24 * 60)
    levels: list[list[str]] = Field(min_length=1)
    status_minutes: float = Field(gt=0, le=7 * 24 * 60)  # Status Update cadence while open

    @field_validator("levels")
    @classmethod
    def _references(cls, value: list[list[str]]) -> list[list[str]]:
        for level in value:
            for ref in level:
                if not _ROLE_REFERENCE.match(ref):
                    raise ValueError(f"{ref!r} is not a role: use team, incident_commander, communications, "
                                     "technical_owner, documentation, on_call, team_lead, security, infrastructure "
                                     "(a contact's backup as e.g. on_call.backup), or pagerduty.<service>")
        return value

    def pagers(self, level: int) -> list[str]:
        """The PagerDuty services (config `pagerduty.services`) triggered at `level`."""
        level = min(level, len(self.levels) - 1)
        return [ref[len(PAGER_PREFIX):] for ref in self.levels[level] if ref.startswith(PAGER_PREFIX)]


class EscalationMatrix(_Model):
    """The playbook's Escalation Matrix as defaults: P0 5 min, all team members; P1 15 min,
    on-call + team lead; P2 1 h, team lead; P3 4 h, issue only."""

    P0: SeverityPolicy = SeverityPolicy(response_minutes=5, levels=[["team"], ["on_call.backup", "team_lead.backup",
                                                                               "infrastructure.backup"]],
                                        status_minutes=15)
    P1: SeverityPolicy = SeverityPolicy(response_minutes=15, levels=[["on_call", "team_lead"],
                                                                     ["on_call.backup", "team_lead.backup"], ["team"]],
                                        status_minutes=30)
    P2: SeverityPolicy = SeverityPolicy(response_minutes=60, levels=[["team_lead"], ["team_lead.backup", "on_call"]],
                                        status_minutes=120)
    P3: SeverityPolicy = SeverityPolicy(response_minutes=240, levels=[[], ["team_lead"]], status_minutes=480)

    def policy(self, severity: Severity | str) -> SeverityPolicy:
        policy: SeverityPolicy = getattr(self, getattr(severity, "value", severity))
        return policy


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

    @model_validator(mode="after")
    def _ingress_named(self) -> "SecurityTarget":
        if self.block_strategy == "ingress_denylist" and not self.ingress:
            raise ValueError("block_strategy ingress_denylist needs `ingress`: the Ingress in front of the service")
        return self


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

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def endpoints(self) -> list[str]:
        return [self.url(self.ok_path), self.url(self.health_path), self.url(self.metrics_path)]


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


def load_config(path: Path | str | None = None) -> ConfigFile:
    path = Path(path) if path else config_path()
    try:
        raw = yaml.load(_expand(path.read_text()), Loader=SAFE_LOADER)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'environments'")
    try:
        parsed = ConfigFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: {problems}") from None
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
