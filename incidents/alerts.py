"""Alerts as they arrive (Alertmanager webhook v4, Grafana unified alerting, a small generic
format), normalised to one shape, and routed by label matchers to a scenario run."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from incidents.errors import RunbookError
from incidents.models import Severity
from incidents.redaction import redact

WITHDRAWN_REASON = "alert resolved and stayed resolved"  # why the intake withdraws a pending approval
SCENARIOS = ("service-down", "high-error-rate", "database-issues", "security-incident")
# the severity a scenario's incident opens with when neither the route, the alert nor the run names one
# (the flows' Scenario.default_severity is this)
DEFAULT_SEVERITY = {"service-down": Severity.P0, "high-error-rate": Severity.P1, "database-issues": Severity.P1,
                    "security-incident": Severity.P0}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$")
_FINGERPRINT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_SERVICE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def starts_at_time(value: Any) -> datetime | None:
    """When the problem began, from an alert's startsAt; None when it does not say (Alertmanager's
    zero time included) or says something that is not a time."""
    if not value or not isinstance(value, str) or value.startswith("0001-"):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class AlertParameter(BaseModel):
    """The `alert` parameter of every scenario flow: one alert as the intake hands it over (an
    Alertmanager or Grafana entry, normalised) or as a person fills it in the UI's form.

    The pinned interface is a JSON object (`alert: dict or None`), so the same JSON is accepted:
    every field is optional, the wire names are kept (startsAt, generatorURL), and keys this
    model does not name are kept as they came (`as_dict`)."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)

    source: str | None = None  # alertmanager | grafana | generic
    status: Literal["firing", "resolved"] | None = None
    fingerprint: str | None = None
    starts_at: str | None = Field(None, alias="startsAt")
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    generator_url: str | None = Field(None, alias="generatorURL")
    # the incident's correlation key, as the intake's route computed it
    correlation_key: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The alert as it came (wire names, with any keys the model does not name)."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def redacted(self) -> AlertParameter:
        """The alert as it may be kept and shown: its annotations (free text from the monitoring
        system, where a templated value can carry a credential) redacted; labels are identity."""
        if not self.annotations:
            return self
        return self.model_copy(update={"annotations": {k: redact(v) for k, v in self.annotations.items()}})

    @property
    def drill_id(self) -> str | None:
        """The drill that raised it (tasks/drill.py labels its alerts), or None for a real one."""
        return self.labels.get("drill_id") or None

    @property
    def started(self) -> datetime | None:
        return starts_at_time(self.starts_at)

    @property
    def name(self) -> str | None:
        return self.labels.get("alertname")

    @property
    def identity(self) -> tuple[str, str]:
        """The alert's fingerprint and when it started firing (one firing of one alert)."""
        return self.fingerprint or "", self.starts_at or ""


class BadPayload(RunbookError, ValueError):
    """The payload is not what the endpoint accepts; the message says why."""


@dataclass(frozen=True)
class Alert:
    source: str  # alertmanager | grafana | generic
    status: Literal["firing", "resolved"]
    fingerprint: str
    starts_at: str
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str | None

    @property
    def key(self) -> str:
        """One incident per firing: the fingerprint and when it started firing."""
        return f"{self.fingerprint}:{self.starts_at}"

    def without_labels(self, ignored: list[str] | tuple[str, ...]) -> "Alert":
        """The same alert without labels that only say who sent it (e.g. a Prometheus replica):
        its fingerprint is then computed over the labels that are left, so both replicas of
        an HA pair send one alert."""
        dropped = {k: v for k, v in self.labels.items() if k not in ignored}
        if len(dropped) == len(self.labels):
            return self
        return replace(self, labels=dropped, fingerprint=fingerprint_of(dropped))

    def as_parameter(self, correlation_key: str | None = None) -> AlertParameter:
        """The alert as a scenario run's `alert` parameter."""
        fields = {"source": self.source, "status": self.status, "fingerprint": self.fingerprint,
                  "startsAt": self.starts_at, "labels": self.labels, "annotations": self.annotations,
                  "generatorURL": self.generator_url}
        if correlation_key is not None:
            fields["correlation_key"] = correlation_key
        return AlertParameter.model_validate(fields)


class _AlertIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = Field(max_length=64)
    annotations: dict[str, str] = Field(default_factory=dict, max_length=64)
    startsAt: str | None = None
    fingerprint: str | None = None
    generatorURL: str | None = Field(None, max_length=2048)

    @field_validator("labels", "annotations")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _LABEL_NAME.match(name):
                raise ValueError(f"invalid label name {name[:40]!r}")
            if len(text) > 4096:
                raise ValueError(f"value of {name} is longer than 4096 characters")
        return value

    @field_validator("startsAt")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"startsAt {value[:40]!r} is not an RFC 3339 timestamp") from None
        return value

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is not None and not _FINGERPRINT.match(value):
            raise ValueError("fingerprint must be 1-128 letters, digits or _.:-")
        return value


class _Group(BaseModel):
    model_config = ConfigDict(extra="ignore")
    alerts: list[_AlertIn] = Field(max_length=1000)
    version: str | None = None
    truncatedAlerts: int = 0


def fingerprint_of(labels: dict[str, str]) -> str:
    """A stable fingerprint of an alert's labels (when its sender gives none)."""
    return hashlib.sha256("\x00".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()).hexdigest()[:16]


def _normalise(source: str, item: _AlertIn, require_start: bool) -> Alert:
    if item.startsAt is None and require_start:
        raise BadPayload("startsAt is required (it tells a re-fire from a resend)")
    return Alert(source, item.status, item.fingerprint or fingerprint_of(item.labels), item.startsAt or "",
                 dict(item.labels), {k: redact(v) for k, v in item.annotations.items()}, item.generatorURL)


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])


def parse_alertmanager(body: Any) -> list[Alert]:
    """Alertmanager's webhook (version 4): groupKey, status, commonLabels, alerts[]."""
    if isinstance(body, dict) and body.get("version") not in (None, "4"):
        raise BadPayload(f"unsupported Alertmanager webhook version {str(body.get('version'))[:10]!r} (expected 4)")
    return _parse_group("alertmanager", body, "Alertmanager webhook, version 4")


def _parse_group(source: str, body: Any, what: str) -> list[Alert]:
    if not isinstance(body, dict):
        raise BadPayload(f"expected a JSON object ({what})")
    try:
        group = _Group.model_validate(body)
    except ValidationError as exc:
        raise BadPayload(_errors(exc)) from None
    return [_normalise(source, a, require_start=True) for a in group.alerts]


def parse_grafana(body: Any) -> list[Alert]:
    """Grafana unified alerting's webhook: the same alert shape as Alertmanager's."""
    return _parse_group("grafana", body, "Grafana webhook")


def parse_generic(body: Any) -> list[Alert]:
    """`{"status": "firing"|"resolved", "labels": {...}, "annotations": {...}, "startsAt": "RFC 3339",
    "fingerprint": optional}` - or `{"alerts": [those]}`."""
    if isinstance(body, dict) and "alerts" not in body:
        body = {"alerts": [body]}
    return _parse_group("generic", body, "an alert or {\"alerts\": [...]}")


def verify_grafana_signature(secret: str, body: bytes, signature: str | None, timestamp: str | None,
                             *, use_timestamp: bool, max_age: float = 300.0, now: float | None = None) -> None:
    """Grafana's X-Grafana-Alerting-Signature: hex HMAC-SHA256 over the body, or over
    `timestamp:body` when a timestamp header is configured (then a stale one is refused)."""
    if not signature:
        raise PermissionError("missing X-Grafana-Alerting-Signature")
    message = body
    if use_timestamp:
        if not timestamp:
            raise PermissionError("missing signature timestamp header")
        try:
            age = abs((now or time.time()) - float(timestamp))
        except ValueError:
            raise PermissionError("signature timestamp is not a number") from None
        if age > max_age:
            raise PermissionError(f"signature timestamp is {age:.0f} s old (limit {max_age:.0f} s)")
        message = timestamp.encode() + b":" + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest().encode()
    try:
        sent = signature.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        raise PermissionError("signature is not hexadecimal") from None
    if not hmac.compare_digest(expected, sent):
        raise PermissionError("signature does not match")


class Route(BaseModel):
    """Label matchers -> which scenario runs where, for which service, at which severity.
    `service` and `environment` default to the alert's labels of those names."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    match: dict[str, str] = Field(min_length=1)
    scenario: Literal["service-down", "high-error-rate", "database-issues", "security-incident"]
    environment: str | None = None
    service: str | None = None
    severity: Severity | None = None
    # labels that, besides environment and service, tell one outage from another (e.g. cluster)
    correlate: list[str] = Field(default_factory=list, max_length=8)


@dataclass(frozen=True)
class RunRequest:
    scenario: str
    environment: str
    service: str
    severity: str | None
    correlation_key: str = ""

    @property
    def deployment(self) -> str:
        return f"{self.scenario}/{self.environment}"

    @property
    def target(self) -> str:
        return target_of(self.environment, self.service)


def target_of(environment: str, service: str) -> str:
    """What one runbook at a time may act on: a service in an environment."""
    return f"{environment}/{service}"


SCENARIOS = ("service-down", "high-error-rate", "database-issues", "security-incident")
DECLARED_ALERTNAME = "Declared"


def declared(environment: str, service: str, scenario: str, severity: str | None, summary: str, by: str,
             at: datetime) -> tuple[Alert, RunRequest]:
    """An incident a person declares (`/incident declare`), as the alert it stands for: the
    same correlation as an alert of that service (a declare for an open outage joins it)."""
    labels = {"alertname": DECLARED_ALERTNAME, "service": service, "environment": environment, "declared_by": by}
    if severity:
        labels["severity"] = severity
    annotations = {"summary": redact(summary or f"declared by {by}"), "declared_by": by}
    alert = Alert("slack", "firing", fingerprint_of(labels), at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), labels,
                  annotations, None)
    return alert, RunRequest(scenario, environment, service, severity, correlation_key(environment, service, labels))


def correlation_key(environment: str, service: str, labels: dict[str, str], correlate: Sequence[str] = ()) -> str:
    """One open incident per outage: environment + service, plus the labels a route adds.
    A drill is its own outage (it must never join, or be joined by, a real incident)."""
    extra = [*correlate, *(["drill_id"] if "drill_id" in labels else [])]
    return target_of(environment, service) + "".join(f"|{k}={labels.get(k, '')}" for k in dict.fromkeys(extra))


def route(alert: Alert, routes: list[Route]) -> RunRequest | None:
    """The first route whose matchers all equal the alert's labels; None if none matches or
    the matched route cannot name a valid service and environment."""
    for rule in routes:
        if all(alert.labels.get(k) == v for k, v in rule.match.items()):
            service = rule.service or alert.labels.get("service", "")
            environment = rule.environment or alert.labels.get("environment", "")
            if not _SERVICE.match(service) or not _SERVICE.match(environment):
                return None
            severity = rule.severity.value if rule.severity else (
                alert.labels["severity"] if alert.labels.get("severity") in Severity.__members__ else None)
            return RunRequest(rule.scenario, environment, service, severity,
                              correlation_key(environment, service, alert.labels, rule.correlate))
    return None
