"""Playbook Scenario 2 (high error rate): check names and the planning rule."""

from __future__ import annotations

from incidents.config import ServiceConfig
from incidents.diagnosis import DEPLOYS, HEALTH, ROLLOUT, Finding, rollback_action
from incidents.plans import Plan, PlannedAction

RATE = "error rate (/metrics)"
PROMETHEUS = "error rate (Prometheus)"
COMMITS = "recent commits"
BREAKER = "circuit breaker"


def plan_high_error_rate(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                         findings: dict[str, Finding]) -> Plan:
    """A recent revision lines up with the spike: roll it back. A dependency fails: open the
    circuit breaker. Otherwise the service is short of capacity: scale up, within its maximum."""
    evidence = tuple(f"{f.check}: {f.summary}" for f in findings.values())
    rate, prom = findings.get(RATE), findings.get(PROMETHEUS)
    spiking = (rate is not None and rate.ok is False) or (prom is not None and prom.ok is False)
    if not spiking:
        return Plan(incident_id, service_name, environment, (), evidence,
                    f"Error rate is below {service.errors.threshold:.1%}: nothing to remediate.")
    deploys = findings.get(DEPLOYS)
    recent = deploys.data.get("recent_revision") if deploys else None
    previous = deploys.data.get("previous_revision") if deploys else None
    if recent and previous:
        action = rollback_action(service, environment, recent, previous)
        return Plan(incident_id, service_name, environment, (action,), evidence,
                    f"Revision {recent['revision']} went live {recent['age']} ago and lines up with the spike: "
                    f"roll back to revision {previous['revision']}.")
    health = findings.get(HEALTH)
    failing = [c for c in (health.data.get("failing_checks", []) if health else []) if c != "database"]
    breaker = service.circuit_breaker
    notes: list[str] = []
    if failing and breaker:
        current = findings[BREAKER].data.get("value") if BREAKER in findings else None
        if current != breaker.on_value:
            where = f"configmap/{breaker.configmap}" if breaker.configmap else "redis flag"
            params = {"namespace": service.kubernetes.namespace, "configmap": breaker.configmap,
                      "redis_url_secret": breaker.redis_url_secret, "key": breaker.key, "value": breaker.on_value,
                      "previous": current}
            action = PlannedAction("circuit_breaker", f"{where} key {breaker.key}", f"{breaker.key}={current}",
                                   f"{breaker.key}={breaker.on_value}", "flag switch (previous value recorded)", params)
            return Plan(incident_id, service_name, environment, (action,), evidence,
                        f"Dependency {', '.join(failing)} is failing: open the circuit breaker to shed its errors.")
        notes.append("the circuit breaker is already on")
    rollout = findings.get(ROLLOUT)
    current = rollout.data.get("desired_replicas") if rollout else None
    if current is None:
        return Plan(incident_id, service_name, environment, (), evidence + tuple(notes),
                    "Error rate is high but the replica count is unknown: a person must look.")
    target = min(current + service.errors.scale_step, service.scaling.max_replicas)
    if target <= current:
        return Plan(incident_id, service_name, environment, (), evidence + tuple(notes),
                    f"Error rate is high and {current} replicas is already the configured maximum: a person must look.")
    k = service.kubernetes
    action = PlannedAction("scale", f"deployment/{k.deployment} (namespace {k.namespace})", f"replicas {current}",
                           f"replicas {target}", "kubectl scale",
                           {"namespace": k.namespace, "deployment": k.deployment, "from": current, "to": target})
    return Plan(incident_id, service_name, environment, (action,), evidence + tuple(notes),
                f"No recent change and no failing dependency: add capacity, {current} -> {target} replicas "
                f"(maximum {service.scaling.max_replicas}).")
