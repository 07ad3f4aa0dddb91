"""Playbook Scenario 4 (security incident): suspicious addresses from the alert, the checks'
names, the planning rule and the public-communication draft."""

from __future__ import annotations

import ipaddress
from typing import Any

from incidents.config import ServiceConfig
from incidents.diagnosis import Finding
from incidents.evidence import STRONG, Weighing, abstain, settle
from incidents.plans import Plan, PlannedAction
from incidents.templates import markdown_text

EVIDENCE = "evidence snapshot"
_MIN_PREFIX = {4: 8, 6: 32}  # broader than this would block a large part of the internet, us included


class InvalidCidr(ValueError):
    pass


def validate_cidr(value: str) -> str:
    """A CIDR or single address to block, normalised (203.0.113.7 -> 203.0.113.7/32)."""
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise InvalidCidr(f"invalid CIDR {value!r}: {exc}") from None
    if network.prefixlen < _MIN_PREFIX[network.version]:
        raise InvalidCidr(f"refusing to block {network}: broader than /{_MIN_PREFIX[network.version]} "
                          f"for IPv{network.version}")
    if network.is_loopback or network.is_link_local:
        raise InvalidCidr(f"refusing to block {network}: loopback or link-local")
    return str(network)


def suspicious_cidrs(alert: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """Addresses named by the alert: annotation `suspicious_ips` (comma or space separated) or
    label `source_ip`. Returns the valid ones (normalised) and, for each value dropped, why:
    one bad value must not stop a P0 containment of the rest."""
    if not alert:
        return [], []
    raw: list[str] = []
    for section in ("annotations", "labels"):
        values = alert.get(section) or {}
        if not isinstance(values, dict):
            continue
        for key in ("suspicious_ips", "source_ip"):
            if values.get(key):
                raw += str(values[key]).replace(",", " ").split()
    valid, dropped = set(), []
    for value in raw:
        try:
            valid.add(validate_cidr(value))
        except InvalidCidr as exc:
            dropped.append(str(exc))
    return sorted(valid), dropped


def plan_security_incident(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                           findings: dict[str, Finding], cidrs: list[str]) -> Plan:
    sec, ns = service.security, service.kubernetes.namespace
    evidence = tuple(f"{f.check}: {f.summary}" for f in findings.values())
    snapshot = findings.get(EVIDENCE)
    meta = {s["name"]: s for s in (snapshot.data.get("secrets", []) if snapshot else [])}
    actions: list[PlannedAction] = []
    for target in sec.secrets:
        version = meta.get(target.name, {}).get("resource_version", "?")
        actions.append(PlannedAction(
            "rotate_secrets", f"secret/{target.name} (namespace {ns})",
            f"keys {', '.join(target.data_keys)} at resourceVersion {version}",
            f"new random values; then rollout restart of {', '.join(sec.consumers) or 'no consumer'}",
            "Kubernetes Secret patch + kubectl rollout restart",
            {"namespace": ns, "secret": target.name, "keys": list(target.data_keys), "consumers": list(sec.consumers),
             "resource_version": version}))
    if cidrs:
        actions.append(PlannedAction(
            "block_ips", f"networkpolicy/{sec.block_policy} (namespace {ns})", "no block for these addresses",
            f"ingress to {service.kubernetes.deployment} denied from {', '.join(cidrs)}",
            "NetworkPolicy ipBlock except", {"namespace": ns, "policy": sec.block_policy,
                                             "app": service.kubernetes.deployment, "cidrs": cidrs}))
    if sec.logging:
        current = (snapshot.data.get("log_level") if snapshot else None) or "unknown"
        actions.append(PlannedAction(
            "enable_logging", f"configmap/{sec.logging.configmap} key {sec.logging.key} (namespace {ns})",
            f"{sec.logging.key}={current}", f"{sec.logging.key}={sec.logging.level}", "ConfigMap patch",
            {"namespace": ns, "configmap": sec.logging.configmap, "key": sec.logging.key,
             "level": sec.logging.level, "previous": current}))
    w = Weighing([f"the alert reports a security incident on {service_name}"]
                 + ([f"the alert names {', '.join(cidrs)} as sources"] if cidrs else []))
    head = Plan(incident_id, service_name, environment, (), evidence)
    if not actions:
        return abstain(head, w, "no containment is configured for this service.")
    return settle(head, actions, STRONG, w,
                  "Contain: " + "; ".join(a.kind.replace("_", " ") + " " + a.target for a in actions))


def public_statement_draft(service: str, opened_at: str, cidrs: list[str]) -> str:
    """A draft for the Communications role; never published by the runbook."""
    return f"""## DRAFT — public communication (not published)

> Review with the Incident Commander and Communications before anything is sent.

**What happened:** On {markdown_text(opened_at)} we detected suspicious activity affecting the
{markdown_text(service)} service. We acted at once to contain it.

**What we did:** We rotated the credentials involved, restarted the affected systems and
{"blocked the sources of the activity" if cidrs else "increased monitoring"}. We have enabled
additional logging while we investigate.

**What it means for you:** We have no evidence so far that customer data was accessed. We will
update this notice as the investigation progresses.

**What you can do:** No action is needed at this time.
"""
