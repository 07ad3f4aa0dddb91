"""Security-incident checks and containment (playbook Scenario 4). The evidence snapshot is
taken before anything changes; secret values never leave the Kubernetes API."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from incidents.action_params import (
    ActionParams,
    Block,
    EnableLogging,
    IngressDenylistBlock,
    NetworkPolicyBlock,
    RotateSecret,
)
from incidents.check_facts import EVIDENCE, Containment, EvidenceFacts, SecretMeta
from incidents.findings import Finding, unavailable
from incidents.followup_models import ActionItemRecord
from incidents.plans import Grant, Plan, PlannedAction, require_grant
from incidents.redaction import redact
from incidents.vocabulary import ActionKind
from integrations.errors import IntegrationError
from integrations.kubernetes_protocol import Kubernetes
from integrations.probes import probe_all
from tasks.context import RunContext, SecretNotFound
from tasks.deploys import ActionResult, Verification
from tasks.steps import run_logger, step

_ERRORS = (IntegrationError, SecretNotFound)


@step("capture-evidence")
def capture_evidence(ctx: RunContext, log_lines: int = 20, max_pods: int = 3) -> Finding:
    """Pods, events, revision history, recent logs, and the metadata (never the values) of the
    service's secrets, as they are before any containment."""
    target, sec = ctx.service.kubernetes, ctx.service.security
    try:
        with ctx.kubernetes() as kube:
            pods = kube.pods(target.namespace, target.deployment)
            events = kube.events(target.namespace, limit=15)
            history = kube.revision_history(target.namespace, target.deployment)
            logs = {
                p.name: kube.pod_logs(target.namespace, p.name, target.container, log_lines) for p in pods[:max_pods]
            }
            secrets_meta = kube.secret_metadata(target.namespace, [s.name for s in sec.secrets])
            log_level = (kube.get_config_value(target.namespace, sec.logging.configmap, sec.logging.key)
                         if sec.logging else None)
            containment, notes = containment_state(ctx, kube)
    except _ERRORS as exc:
        return unavailable(EVIDENCE, exc)
    details = tuple(
        [f"pod {p.name}: {'ready' if p.ready else 'not ready'}, {p.restarts} restarts, image {p.image}" for p in pods]
        + [f"revision {r.revision}: {r.image} created {r.created}" for r in history[:5]]
        + [e.describe() for e in events]
        + [f"secret {s.name} ({s.type}): keys {', '.join(s.keys)}; resourceVersion {s.resource_version}; "
           f"created {s.created}" for s in secrets_meta])
    excerpt = redact("\n".join(f"== {name} ==\n{text}" for name, text in logs.items()))
    return Finding(EVIDENCE, True, f"captured {len(pods)} pods, {len(events)} events, {len(history)} revisions, "
                                   f"{len(logs)} pod logs, {len(secrets_meta)} secrets (metadata only)",
                   details + tuple(notes),
                   EvidenceFacts(secrets=[SecretMeta(name=s.name, data_keys=list(s.keys),
                                                     resource_version=s.resource_version) for s in secrets_meta],
                                 log_level=log_level, captured_at=time.time(), containment=containment),
                   excerpt or None)


def containment_state(ctx: RunContext, kube: Kubernetes) -> tuple[Containment, list[str]]:
    """What restricts the service's pods now: other NetworkPolicies selecting them, what our
    block policy already blocks, and the Ingress's deny list; and the same as lines for the report."""
    target, sec = ctx.service.kubernetes, ctx.service.security
    labels = dict(kube.deployment(target.namespace, target.deployment).template_labels)
    policies = kube.policies_selecting(target.namespace, labels, sec.block_policy)
    blocks = kube.blocked_by_policy(target.namespace, sec.block_policy)
    denylist: dict[str, Any] = {"denylist": None}
    if sec.ingress:
        try:
            denylist["denylist"] = kube.ingress_denylist(target.namespace, sec.ingress)
        except IntegrationError as exc:
            denylist["denylist_error"] = str(exc)
    notes = [f"network policies selecting the pods: {', '.join(policies) or 'none'}",
             f"{sec.block_policy} blocks: {', '.join(blocks) or 'nothing'}"] + (
        [f"ingress {sec.ingress} deny list: {', '.join(denylist['denylist'] or []) or 'empty'}"] if sec.ingress else [])
    return Containment(labels=labels, policies=policies, policy_blocks=blocks, **denylist), notes


@step("rotate-secrets")
def rotate_secrets(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """New random values for the planned keys, then a rollout restart of the consumers."""
    require_grant(grant, action)
    p = action.params_as(RotateSecret)
    with ctx.kubernetes() as kube:
        version = kube.rotate_secret(p.namespace, p.secret, p.data_keys)
        restarted = [kube.rollout_restart(p.namespace, consumer) and consumer for consumer in p.consumers]
    run_logger().info("Rotated %d keys of secret %s; restarted %s", len(p.data_keys), p.secret, restarted)
    return ActionResult(
        action.describe(),
        True,
        f"secret/{p.secret} keys {', '.join(p.data_keys)} rotated "
        f"(resourceVersion {version}); restarted {', '.join(restarted) or 'none'}",
    )


@step("block-ips")
def block_ips(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """Deny the planned CIDRs: in the Ingress's deny list (ingress-nginx sees the real client
    address), or with the block NetworkPolicy (only where no other policy selects the pods:
    re-checked just before, in tasks.prechecks)."""
    require_grant(grant, action)
    p = action.params_as(Block)
    with ctx.kubernetes() as kube:
        if isinstance(p, IngressDenylistBlock):
            denied = set(kube.ingress_denylist(p.namespace, p.ingress)) | set(p.cidrs)
            blocked = kube.set_ingress_denylist(p.namespace, p.ingress, sorted(denied))
            return ActionResult(action.describe(), True, f"ingress/{p.ingress} denies {', '.join(blocked)}")
        policy = action.params_as(NetworkPolicyBlock)
        blocked = kube.block_cidrs(policy.namespace, policy.policy, policy.app, policy.cidrs)
    return ActionResult(action.describe(), True, f"networkpolicy/{policy.policy} blocks {', '.join(blocked)}")


def blocked_now(kube: Kubernetes, p: Block) -> list[str]:
    """What the planned block's mechanism blocks at this moment."""
    if isinstance(p, IngressDenylistBlock):
        return kube.ingress_denylist(p.namespace, p.ingress)
    if isinstance(p, NetworkPolicyBlock):
        return kube.blocked_by_policy(p.namespace, p.policy)
    raise TypeError(f"no block strategy in {type(p).__name__}")


@step("enable-logging")
def enable_logging(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """Raise the service's log level through its ConfigMap; the previous level is kept in the result."""
    require_grant(grant, action)
    p = action.params_as(EnableLogging)
    with ctx.kubernetes() as kube:
        previous = kube.set_config_value(p.namespace, p.configmap, p.key, p.level)
    return ActionResult(action.describe(), previous != p.level,
                        f"{p.key}: {previous} -> {p.level} (turn back with {p.key}={previous})")


def _not_contained(kube: Kubernetes, p: ActionParams | dict[str, Any],
                   secrets_before: dict[str, str | None]) -> list[str]:
    """What of one containment action is not in place yet (nothing: it is)."""
    problems = []
    if isinstance(p, RotateSecret):
        now = kube.secret_metadata(p.namespace, [p.secret])[0].resource_version
        if now == secrets_before.get(p.secret):
            problems.append(f"secret {p.secret} unchanged")
        for consumer in p.consumers:
            status = kube.rollout_status(p.namespace, consumer)
            if not status.done:
                problems.append(status.message)
    elif isinstance(p, Block):
        missing = sorted(set(p.cidrs) - set(blocked_now(kube, p)))
        if missing:
            problems.append(f"not blocked: {', '.join(missing)}")
    elif isinstance(p, EnableLogging):
        value = kube.get_config_value(p.namespace, p.configmap, p.key)
        if value != p.level:
            problems.append(f"{p.key} is {value}, not {p.level}")
    return problems


@step("verify-containment")
def verify_containment(ctx: RunContext, findings: dict[str, Finding], plan: Plan) -> Verification:
    """Rotated secrets have new versions, consumers rolled out, the block and the log level are
    in place, and the service answers."""
    timeouts, start = ctx.config.timeouts, time.monotonic()
    secrets = findings[EVIDENCE].facts(EvidenceFacts).secrets if EVIDENCE in findings else []
    before = {s.name: s.resource_version for s in secrets}
    while True:
        problems = []
        try:
            with ctx.kubernetes() as kube:
                for action in plan.actions:
                    problems += _not_contained(kube, action.params, before)
        except _ERRORS as exc:
            problems.append(str(exc))
        failing = [r for r in probe_all(ctx.service.endpoints, timeouts.probe_seconds) if not r.ok]
        problems += [r.describe() for r in failing]
        elapsed = time.monotonic() - start
        if not problems:
            return Verification(True, elapsed, "containment in place and the service answers")
        if elapsed + timeouts.verify_poll_seconds > timeouts.verify_seconds:
            return Verification(False, elapsed, "; ".join(problems))
        time.sleep(timeouts.verify_poll_seconds)


def rotated_secrets(ctx: RunContext, incident_id: int) -> list[PlannedAction]:
    """The secret rotations of the incident's approved plan (what the executor ran, once)."""
    approved = [a for a in ctx.store().approvals(incident_id) if a.decision == "approved"]
    plan = approved[-1].plan if approved else None
    return [a for a in plan.actions if a.kind == ActionKind.ROTATE_SECRETS] if plan else []


def file_revocation(ctx: RunContext, incident_id: int, rotated: list[PlannedAction]) -> list[ActionItemRecord]:
    """Rotation changes the values in the cluster, not at their issuer: an action item (due in
    24 h, owned by the security role) to revoke the leaked ones there, in the store and as a
    GitHub issue, once."""
    from tasks.postmortem import ActionItem, file_action_items

    store = ctx.store()
    incident = store.get(incident_id)
    secrets_named = ", ".join(action.target for action in rotated)
    item = ActionItem(title=f"Revoke the leaked credentials of {secrets_named} at their issuer",
                      owner=ctx.config.roles.security.primary, due="24h")
    return file_action_items(ctx, incident, [item], store, datetime.now(timezone.utc))
