"""What the product tells about itself: a Prefect event at each lifecycle transition (so that a
user can hang a Prefect Automation on it), and the counts of runs, approvals, actions and
notifications (Prometheus; docs/observability.md lists every name).

Events: `runbooks.incident.opened|acknowledged|escalated|resolved`,
`runbooks.approval.requested|decided`, `runbooks.action.started|succeeded|failed`. The primary
resource is the incident, approval or action, labelled with the incident, service, environment,
severity and scenario; related resources name the incident, the service, the severity and the
flow run (inside a run Prefect adds the flow, deployment, work pool and tags itself). They are
emitted through Prefect's own events client, which queues them in the background: a Prefect
that cannot take them never holds up a step.

Metrics: counters and histograms kept by each run's process. Under the warm worker they are
written through prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by the
worker before its fork server starts) and served, summed over every run, by the worker's
/metrics (deployments/worker_metrics.py).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from prefect.events import emit_event
from prometheus_client import Counter, Histogram

from incidents.models import EventKind, Incident
from incidents.redaction import redact
from incidents.timeline_payloads import ApprovalStep, NoData, Payload, payload_as

_log = logging.getLogger("runbooks.telemetry")
# the incident this run works on, once it is known (JSON log lines carry it; deployments/log_format.py)
current_incident: ContextVar[int | None] = ContextVar("current_incident", default=None)

# Seconds: the buckets of the run histograms (a plan comes in seconds, an action in seconds to minutes).
_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

# Not registered in the process's default registry: under the warm worker every run's process
# writes them to files the worker sums; elsewhere (the intake) they are not served.
RUNS_STARTED = Counter("runbooks_runs_started", "Scenario runs started (a resumed run counts again)",
                       ["scenario"], registry=None)
RUNS_FINISHED = Counter("runbooks_runs_finished", "Scenario runs finished, by outcome (resolved, declined, ...)",
                        ["scenario", "outcome"], registry=None)
TIME_TO_PLAN = Histogram("runbooks_time_to_plan_seconds", "From the incident opened to its plan recorded",
                         ["scenario"], buckets=_BUCKETS, registry=None)
APPROVE_TO_ACTION = Histogram("runbooks_approve_to_action_seconds", "From the approval to the action done",
                              ["kind"], buckets=_BUCKETS, registry=None)
ACTIONS = Counter("runbooks_actions", "Approved actions run, by kind and result (succeeded, failed, refused)",
                  ["kind", "result"], registry=None)
APPROVALS_DECIDED = Counter("runbooks_approvals_decided", "Approvals decided, by decision",
                            ["decision"], registry=None)
NOTIFICATIONS_FAILED = Counter("runbooks_notifications_failed", "Messages not delivered, by channel",
                               ["channel"], registry=None)
RUN_METRICS = (RUNS_STARTED, RUNS_FINISHED, TIME_TO_PLAN, APPROVE_TO_ACTION, ACTIONS, APPROVALS_DECIDED,
               NOTIFICATIONS_FAILED)

INCIDENT_EVENTS = {
    EventKind.DETECTED: "runbooks.incident.opened",
    EventKind.ACKNOWLEDGED: "runbooks.incident.acknowledged",
    EventKind.ESCALATED: "runbooks.incident.escalated",
    EventKind.RESOLVED: "runbooks.incident.resolved",
    EventKind.RESOLVED_BY_HAND: "runbooks.incident.resolved",
}
APPROVAL_EVENTS = {
    EventKind.APPROVAL_REQUESTED: "runbooks.approval.requested",
    EventKind.APPROVAL_APPROVED: "runbooks.approval.decided",
    EventKind.APPROVAL_DECLINED: "runbooks.approval.decided",
    EventKind.APPROVAL_TIMED_OUT: "runbooks.approval.decided",
    EventKind.APPROVAL_WITHDRAWN: "runbooks.approval.decided",
}
ACTION_EVENTS = ("runbooks.action.started", "runbooks.action.succeeded", "runbooks.action.failed")
EVENT_NAMES = tuple(dict.fromkeys([*INCIDENT_EVENTS.values(), *APPROVAL_EVENTS.values(), *ACTION_EVENTS]))

# which channel a NOTIFICATION_FAILED entry is about, from how its message starts
_CHANNELS = (("Slack", "slack"), ("PagerDuty", "pagerduty"), ("GitHub", "github"), ("issue", "github"),
             ("Action item", "github"))


def tells(kind: EventKind | str) -> bool:
    """Whether a timeline entry of this kind is told as a Prefect event."""
    return kind in INCIDENT_EVENTS or kind in APPROVAL_EVENTS


def notification_failed(message: str) -> None:
    """A NOTIFICATION_FAILED timeline entry: counted by channel (from how its message starts)."""
    NOTIFICATIONS_FAILED.labels(next((name for prefix, name in _CHANNELS if message.startswith(prefix)), "other")).inc()


def timeline_entry(incident: Incident, kind: EventKind | str, actor: str, data: Payload | None) -> None:
    """A timeline entry as an event, and a decision in the counts (tasks/timeline.record calls this)."""
    if kind in INCIDENT_EVENTS:
        emit(INCIDENT_EVENTS[EventKind(kind)], incident, f"runbooks.incident.{incident.id}", actor)
    elif kind in APPROVAL_EVENTS:
        decision = str(kind).removeprefix("approval_")
        if kind != EventKind.APPROVAL_REQUESTED:
            APPROVALS_DECIDED.labels(decision).inc()
        step = payload_as(data or NoData(), ApprovalStep)
        digest = step.plan_digest[:16] if step else "plan"
        emit(APPROVAL_EVENTS[EventKind(kind)], incident, f"runbooks.approval.{incident.id}.{digest}", actor,
             {"runbooks.decision": decision, "runbooks.automatic": str(bool(step and step.automatic)).lower()})


def action(incident: Incident | None, phase: str, kind: str, action_digest: str, granted_at: str | None = None,
           detail: str = "") -> None:
    """An approved action started, succeeded, failed or was refused (its target changed). Counted
    always; its event only with the incident known."""
    if phase != "started":
        ACTIONS.labels(kind, phase).inc()
    if phase == "succeeded" and granted_at:
        APPROVE_TO_ACTION.labels(kind).observe(max(0.0, _since(granted_at)))
    if incident is None:
        return
    event = {"started": ACTION_EVENTS[0], "succeeded": ACTION_EVENTS[1]}.get(phase, ACTION_EVENTS[2])
    emit(event, incident, f"runbooks.action.{incident.id}.{action_digest[:16]}", "runbook",
         {"runbooks.action": kind, "runbooks.result": phase}, {"detail": redact(detail)[:300]} if detail else None)


def run_started(scenario: str) -> None:
    RUNS_STARTED.labels(scenario).inc()


def run_finished(scenario: str, outcome: str) -> None:
    RUNS_FINISHED.labels(scenario, outcome).inc()


def planned(incident: Incident) -> None:
    """The plan is recorded: how long since the incident opened."""
    TIME_TO_PLAN.labels(incident.scenario).observe(max(0.0, (datetime.now(timezone.utc) - incident.opened_at)
                                                   .total_seconds()))


def _since(iso: str) -> float:
    return (datetime.now(timezone.utc) - datetime.fromisoformat(iso)).total_seconds()


def resources(incident: Incident) -> list[dict[str, str]]:
    """The incident, its service and its severity as related resources of an event."""
    return [
        {"prefect.resource.id": f"runbooks.incident.{incident.id}", "prefect.resource.role": "incident",
         "prefect.resource.name": f"incident {incident.id}"},
        {"prefect.resource.id": f"runbooks.service.{incident.environment}.{incident.service}",
         "prefect.resource.role": "service", "prefect.resource.name": incident.service},
        {"prefect.resource.id": f"runbooks.severity.{incident.severity.value}", "prefect.resource.role": "severity",
         "prefect.resource.name": incident.severity.value},
    ]


def emit(event: str, incident: Incident, resource_id: str, actor: str, labels: dict[str, str] | None = None,
         payload: dict[str, Any] | None = None) -> None:
    """Emit one lifecycle event. Never raises: telling about a step must not stop the step."""
    from prefect.runtime import flow_run

    resource = {"prefect.resource.id": resource_id, "runbooks.incident": str(incident.id),
                "runbooks.service": incident.service, "runbooks.environment": incident.environment,
                "runbooks.severity": incident.severity.value, "runbooks.scenario": incident.scenario,
                "runbooks.actor": redact(actor), **(labels or {})}
    related = resources(incident)
    run_id = flow_run.get_id()
    if run_id is not None:
        related.append({"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.resource.role": "flow-run"})
    try:
        emit_event(event, resource=resource, related=related, payload=payload)
    except Exception as exc:  # noqa: BLE001 - an events client that fails is logged, the step goes on
        _log.warning("event %s for incident %s not emitted: %s: %s", event, incident.id, type(exc).__name__, exc)
