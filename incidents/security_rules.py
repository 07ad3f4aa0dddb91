"""Playbook Scenario 4 (security incident): suspicious addresses from the alert, the
planning rule and the public-communication draft."""

from __future__ import annotations

import ipaddress

from incidents.action_params import EnableLogging, IngressDenylistBlock, NetworkPolicyBlock, RotateSecret
from incidents.alerts import AlertParameter
from incidents.check_facts import EVIDENCE, Containment, EvidenceFacts
from incidents.config import ServiceConfig
from incidents.errors import RunbookError
from incidents.evidence import Weighing, abstain, settle
from incidents.findings import Finding
from incidents.plans import Plan, PlannedAction
from incidents.templates import markdown_text
from incidents.vocabulary import ActionKind, Confidence

DENYLIST_ANNOTATION = "nginx.ingress.kubernetes.io/denylist-source-range"
_MIN_PREFIX = {4: 16, 6: 48}  # broader than this would block a large part of the internet, us included
# Addresses that never come from the internet: blocking them cuts in-cluster and internal
# traffic (pods, nodes, load balancers, carrier-grade NAT), never an attacker's.
_INTERNAL = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8"))


# IPv6 ranges that carry an IPv4 address in their last 32 bits (IPv4-mapped, IPv4-translated,
# IPv4-compatible, NAT64's well-known prefix): a block there is a block of that IPv4 range.
_IPV4_IN_LAST_32 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96",
                                                             "64:ff9b::/96"))
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # 6to4: the IPv4 address in bits 16-48
# IPv6 ranges whose embedded IPv4 address cannot be read off the prefix (Teredo, local NAT64)
_OPAQUE_TRANSLATION = tuple(ipaddress.IPv6Network(n) for n in ("2001::/32", "64:ff9b:1::/48"))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class InvalidCidr(RunbookError, ValueError):
    pass


def _as_ipv4(network: Network) -> Network:
    """An IPv6 range that embeds IPv4 addresses, as the IPv4 range it stands for (checked as
    that); every other range as it is. A range that only partly covers translation space, or
    whose IPv4 part cannot be read, is refused."""
    if not isinstance(network, ipaddress.IPv6Network):
        return network
    if any(network.subnet_of(space) for space in _IPV4_IN_LAST_32):
        return ipaddress.IPv4Network((int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96))
    if network.subnet_of(_SIX_TO_FOUR):
        return ipaddress.IPv4Network(((int(network.network_address) >> 80) & 0xFFFFFFFF,
                                      min(32, network.prefixlen - 16)))
    overlapped = [s for s in (*_IPV4_IN_LAST_32, _SIX_TO_FOUR, *_OPAQUE_TRANSLATION) if network.overlaps(s)]
    if overlapped:
        raise InvalidCidr(f"refusing to block {network}: it overlaps {overlapped[0]}, IPv6 space that carries IPv4 "
                          f"addresses (block the IPv4 addresses themselves)")
    return network


def validate_cidr(value: str) -> str:
    """A CIDR or single address to block, normalised (203.0.113.7 -> 203.0.113.7/32; an IPv4
    address written in IPv6, such as ::ffff:203.0.113.7, as the IPv4 address it is)."""
    try:
        parsed = ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise InvalidCidr(f"invalid CIDR {value!r}: {exc}") from None
    network = _as_ipv4(parsed)
    if network.prefixlen < _MIN_PREFIX[network.version]:
        raise InvalidCidr(f"refusing to block {network}: broader than /{_MIN_PREFIX[network.version]} "
                          f"for IPv{network.version}")
    internal = next((n for n in _INTERNAL if n.version == network.version and network.overlaps(n)), None)
    if internal is not None:
        raise InvalidCidr(f"refusing to block {network}: it overlaps {internal}, a private, loopback, link-local "
                          f"or otherwise internal range (blocking it cuts the cluster's own traffic)")
    return str(network)


def suspicious_cidrs(alert: AlertParameter | None) -> tuple[list[str], list[str]]:
    """Addresses named by the alert: annotation `suspicious_ips` (comma or space separated) or
    label `source_ip`. Returns the valid ones (normalised) and, for each value dropped, why:
    one bad value must not stop a P0 containment of the rest."""
    if not alert:
        return [], []
    raw: list[str] = []
    for values in (alert.annotations, alert.labels):
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


REVOKE_AT_ISSUER = ("the leaked values stay valid wherever they were issued (a cloud provider, a payment API, "
                    "a database) until revoked there: revoke them at their issuer")


def plan_security_incident(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                           findings: dict[str, Finding], cidrs: list[str]) -> Plan:
    sec, ns = service.security, service.kubernetes.namespace
    evidence = tuple(f"{f.check}: {f.summary}" for f in findings.values())
    snapshot = findings[EVIDENCE].facts(EvidenceFacts) if EVIDENCE in findings else EvidenceFacts()
    meta = {s.name: s for s in snapshot.secrets}
    w = Weighing([f"the alert reports a security incident on {service_name}"]
                 + ([f"the alert names {', '.join(cidrs)} as sources"] if cidrs else []))
    actions: list[PlannedAction] = []
    for target in sec.secrets:
        seen = meta.get(target.name)
        version = (seen.resource_version if seen else None) or "?"
        actions.append(PlannedAction(
            ActionKind.ROTATE_SECRETS, f"secret/{target.name} (namespace {ns})",
            f"keys {', '.join(target.data_keys)} at resourceVersion {version}",
            f"new random values; then rollout restart of {', '.join(sec.consumers) or 'no consumer'} "
            f"(the old values stay valid at their issuer until revoked there)",
            "Kubernetes Secret patch + kubectl rollout restart",
            RotateSecret(namespace=ns, secret=target.name, data_keys=list(target.data_keys),
                         consumers=list(sec.consumers), resource_version=version)))
    if cidrs:
        block = block_action(service, cidrs, snapshot.containment, w)
        if block is not None:
            actions.append(block)
    if sec.logging:
        current = snapshot.log_level or "unknown"
        actions.append(PlannedAction(
            ActionKind.ENABLE_LOGGING, f"configmap/{sec.logging.configmap} key {sec.logging.key} (namespace {ns})",
            f"{sec.logging.key}={current}", f"{sec.logging.key}={sec.logging.level}", "ConfigMap patch",
            EnableLogging(namespace=ns, configmap=sec.logging.configmap, key=sec.logging.key,
                          level=sec.logging.level, previous=current)))
    head = Plan(incident_id, service_name, environment, (), evidence)
    if not actions:
        return abstain(head, w, "no containment is configured for this service.")
    return settle(head, actions, Confidence.STRONG, w,
                  "Contain: " + "; ".join(a.kind.replace("_", " ") + " " + a.target for a in actions))


def block_action(service: ServiceConfig, cidrs: list[str], state: Containment, w: Weighing) -> PlannedAction | None:
    """The block by the service's strategy, showing what is blocked now and after; a
    NetworkPolicy is refused (with the reason and the alternative) when another policy
    already selects the pods, because policies add up and it would widen their access."""
    sec, k = service.security, service.kubernetes
    if sec.block_strategy == "ingress_denylist":
        assert sec.ingress, "the config refuses ingress_denylist without an ingress"  # config_services.py
        now = sorted(state.denylist or [])
        return PlannedAction(
            ActionKind.BLOCK_IPS, f"ingress/{sec.ingress} (namespace {k.namespace})",
            f"deny list: {', '.join(now) or 'empty'}", f"deny list: {', '.join(sorted(set(now) | set(cidrs)))}",
            f"ingress-nginx annotation {DENYLIST_ANNOTATION} (the controller sees the real client address)",
            IngressDenylistBlock(strategy="ingress_denylist", namespace=k.namespace, ingress=sec.ingress, cidrs=cidrs,
                                 existing=now))
    others = state.policies
    if others:
        alternative = (f"set block_strategy: ingress_denylist (Ingress {sec.ingress})" if sec.ingress
                       else "set block_strategy: ingress_denylist with the service's Ingress")
        w.against.append(f"block by NetworkPolicy refused: {', '.join(others)} already select the pods of "
                         f"{k.deployment}, and a policy admitting all but {', '.join(cidrs)} would widen what they "
                         f"may receive; {alternative}, or block at the edge by hand")
        return None
    now = sorted(state.policy_blocks)
    return PlannedAction(
        ActionKind.BLOCK_IPS, f"networkpolicy/{sec.block_policy} (namespace {k.namespace})",
        f"no other policy selects the pods; blocked: {', '.join(now) or 'nothing'}",
        f"ingress to {k.deployment} from {admitted_ranges(set(now) | set(cidrs))}, and from every pod and "
        f"namespace of the cluster", "NetworkPolicy ipBlock except (sole policy on the pods)",
        NetworkPolicyBlock(strategy="network_policy", namespace=k.namespace, policy=sec.block_policy,
                           app=k.deployment, cidrs=cidrs, labels=state.labels or {"app": k.deployment},
                           existing=now))


def admitted_ranges(blocked: set[str]) -> str:
    """What a block policy admits, family by family (the policy admits both, always)."""
    v4 = sorted(c for c in blocked if ":" not in c)
    v6 = sorted(c for c in blocked if ":" in c)
    return (f"IPv4 0.0.0.0/0 except {', '.join(v4) or 'nothing'} "
            f"and IPv6 ::/0 except {', '.join(v6) or 'nothing'}")


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
