"""Before acting, every remedy's target is read again: an action runs only if its target is
still in the state the plan was approved for. One check per kind of action, in one place;
the executor calls `recheck` before the first attempt of each action."""

from __future__ import annotations

from typing import Callable

from incidents.action_params import (
    Block,
    CircuitBreaker,
    ClearCache,
    EnableLogging,
    IngressDenylistBlock,
    NetworkPolicyBlock,
    Rollback,
    RolloutRestart,
    RotateSecret,
    Scale,
    Sessions,
)
from incidents.plans import PlannedAction
from incidents.vocabulary import ActionKind
from integrations.kubernetes_views import DeploymentView
from tasks import permissions
from tasks.context import RunContext
from tasks.deploys import RemediationFailed

# A session's clock may read a little less than at planning when the two reads straddle a
# statement boundary; more than this and it is not the session that was planned for.
_CLOCK_SLACK_SECONDS = 1.0


class TargetChanged(RemediationFailed):
    """The target is no longer as the approved plan found it: nothing was done."""


def _deployment(ctx: RunContext, namespace: str, name: str) -> DeploymentView:
    with ctx.kubernetes() as kube:
        return kube.deployment(namespace, name)


def _rollback(ctx: RunContext, action: PlannedAction) -> str | None:
    p = action.params_as(Rollback)
    dep = _deployment(ctx, p.namespace, p.deployment)
    if dep.revision != p.from_revision and dep.image != p.to_image:
        return (f"deployment/{p.deployment} is at revision {dep.revision} ({dep.image}), not {p.from_revision} "
                f"as planned")
    return None


def _restart(ctx: RunContext, action: PlannedAction) -> str | None:
    p = action.params_as(RolloutRestart)
    dep = _deployment(ctx, p.namespace, p.deployment)
    if dep.paused:
        return (f"deployment/{p.deployment} is paused (kubectl rollout restart refuses a paused deployment; "
                f"`kubectl rollout resume` it first, if that is intended)")
    if p.revision is not None and dep.revision != p.revision:
        return f"deployment/{p.deployment} is at revision {dep.revision}, not {p.revision} as planned"
    return None


def _scale(ctx: RunContext, action: PlannedAction) -> str | None:
    """The replica count (or, for an HPA, its minReplicas) is as planned, and who owns the
    count has not changed: an HPA that appeared would revert a manual scale."""
    p = action.params_as(Scale)
    with ctx.kubernetes() as kube:
        autoscaler = kube.autoscaler_of(p.namespace, p.deployment)
        replicas = kube.deployment(p.namespace, p.deployment).replicas
    if p.hpa:
        if autoscaler is None or autoscaler.name != p.hpa:
            return f"HPA {p.hpa} no longer scales deployment/{p.deployment}"
        if autoscaler.min != p.from_ and autoscaler.min < p.to:
            return f"HPA {p.hpa} has minReplicas {autoscaler.min}, not {p.from_} as planned"
        return None
    if autoscaler is not None:
        return (f"HPA {autoscaler.name} now scales deployment/{p.deployment} ({autoscaler.min}-"
                f"{autoscaler.max}): a manual scale would be reverted")
    if replicas != p.from_ and replicas < p.to:
        return f"deployment/{p.deployment} has {replicas} replicas, not {p.from_} as planned"
    return None


def _switch_value(ctx: RunContext, namespace: str, configmap: str | None, redis_url_secret: str | None,
                  key: str) -> str | None:
    if configmap:
        with ctx.kubernetes() as kube:
            return kube.get_config_value(namespace, configmap, key)
    with ctx.cache(redis_url_secret or "") as cache:
        return cache.get(key)


def _switch_moved(key: str, now: str | None, previous: str | None, target: str) -> str | None:
    """The switch still holds the value the plan saw (or already the one it sets)."""
    if now not in (previous, target) and not (previous in (None, "unknown") and now is None):
        return f"{key} is {now!r}, not {previous!r} as planned"
    return None


def _breaker(ctx: RunContext, action: PlannedAction) -> str | None:
    p = action.params_as(CircuitBreaker)
    return _switch_moved(p.key, _switch_value(ctx, p.namespace, p.configmap, p.redis_url_secret, p.key), p.previous,
                         p.value)


def _log_level(ctx: RunContext, action: PlannedAction) -> str | None:
    p = action.params_as(EnableLogging)
    return _switch_moved(p.key, _switch_value(ctx, p.namespace, p.configmap, None, p.key), p.previous, p.level)


def _sessions(ctx: RunContext, action: PlannedAction) -> str | None:
    """Each backend is the same one (pid and start), in the same state, and has been in that
    state (or that query) at least as long as when planned: it has not moved on and come back."""
    p = action.params_as(Sessions)
    current = {s.pid: s for s in ctx.postgres().sessions()}
    changed = []
    for pid, started in p.sessions:
        now, want = current.get(pid), p.expect.get(str(pid))
        if now is None or now.backend_start.isoformat() != started:
            changed.append(f"pid {pid} has ended")
            continue
        if want is None:
            continue
        clock = now.seconds_in_query if want.clock == "query" else now.seconds_in_state
        if now.state != want.state:
            changed.append(f"pid {pid} is {now.state}, not {want.state}")
        elif clock is None or clock + _CLOCK_SLACK_SECONDS < want.seconds:
            changed.append(f"pid {pid} left {want.state} and came back")
    return "; ".join(changed) or None


def _cache(ctx: RunContext, action: PlannedAction) -> str | None:
    p = action.params_as(ClearCache)
    if p.mode == "flushdb" or p.planned_keys is None:
        return None
    with ctx.cache(ctx.cache_target().url_secret) as cache:
        now = cache.count_prefix(p.prefix)
    if now == 0:
        return f"no key under {p.prefix} is left"
    if now > 2 * p.planned_keys + 10:
        return f"{now} keys under {p.prefix}, not about {p.planned_keys} as planned"
    return None


def _secret(ctx: RunContext, action: PlannedAction) -> str | None:
    p = action.params_as(RotateSecret)
    if p.resource_version in (None, "?"):
        return None
    with ctx.kubernetes() as kube:
        [meta] = kube.secret_metadata(p.namespace, [p.secret])
    if meta.resource_version != p.resource_version:
        return (f"secret/{p.secret} is at resourceVersion {meta.resource_version}, not {p.resource_version}: "
                f"someone changed it since the plan")
    return None


def _block(ctx: RunContext, action: PlannedAction) -> str | None:
    """A NetworkPolicy block still has the pods to itself; a deny list still reads as planned."""
    p = action.params_as(Block)
    with ctx.kubernetes() as kube:
        if isinstance(p, IngressDenylistBlock):
            now = kube.ingress_denylist(p.namespace, p.ingress)
            if sorted(now) != sorted(p.existing) and not set(p.cidrs) <= set(now):
                return f"ingress/{p.ingress} denies {', '.join(now) or 'nothing'} now, not as planned"
            return None
        policy = action.params_as(NetworkPolicyBlock)
        others = kube.policies_selecting(policy.namespace, policy.labels or {"app": policy.app}, policy.policy)
    if others:
        return (f"{', '.join(others)} now select the pods: a block policy would widen their access "
                f"(policies add up)")
    return None


CHECKS: dict[ActionKind, Callable[[RunContext, PlannedAction], str | None]] = {
    ActionKind.BLOCK_IPS: _block,
    ActionKind.ROLLBACK: _rollback, ActionKind.ROLLOUT_RESTART: _restart, ActionKind.SCALE: _scale,
    ActionKind.CIRCUIT_BREAKER: _breaker, ActionKind.ENABLE_LOGGING: _log_level,
    ActionKind.TERMINATE_SESSIONS: _sessions, ActionKind.CANCEL_QUERIES: _sessions, ActionKind.CLEAR_CACHE: _cache,
    ActionKind.ROTATE_SECRETS: _secret,
}


def recheck(ctx: RunContext, action: PlannedAction) -> None:
    """Raise TargetChanged unless the action's target is as the approved plan found it, and the
    runbooks may still change it (a Role edited since the approval)."""
    refused = permissions.missing(ctx, [action])
    if refused:
        raise TargetChanged(f"{permissions.lacking(refused)}; {action.kind} not run")
    problem = CHECKS[action.kind](ctx, action)
    if problem:
        raise TargetChanged(f"target changed since approval: {problem}; {action.kind} not run")
