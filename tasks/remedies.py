"""Every remedy by the kind of action it performs, and the executor that runs exactly an
approved plan, each action once."""

from __future__ import annotations

import inspect

from prefect import Task

from incidents.models import ActionRecord
from incidents.plans import Grant, Plan, PlannedAction, require_grant
from incidents.store import StoreError
from incidents.vocabulary import ActionKind
from integrations.errors import IntegrationError
from tasks import telemetry
from tasks.cancellation import raise_if_cancelling
from tasks.containment import record_containment
from tasks.context import RunContext
from tasks.database import cancel_queries, clear_cache, terminate_sessions
from tasks.deploys import ActionResult, RemediationFailed, restart_deployment, rollback_deployment
from tasks.error_rate import scale_deployment, set_circuit_breaker
from tasks.prechecks import TargetChanged, recheck
from tasks.security import block_ips, enable_logging, rotate_secrets
from tasks.steps import run_logger

REMEDIES: dict[ActionKind, Task[..., ActionResult]] = {
    ActionKind.ROLLBACK: rollback_deployment,
    ActionKind.ROLLOUT_RESTART: restart_deployment,
    ActionKind.TERMINATE_SESSIONS: terminate_sessions,
    ActionKind.CANCEL_QUERIES: cancel_queries,
    ActionKind.CLEAR_CACHE: clear_cache,
    ActionKind.SCALE: scale_deployment,
    ActionKind.CIRCUIT_BREAKER: set_circuit_breaker,
    ActionKind.ROTATE_SECRETS: rotate_secrets,
    ActionKind.BLOCK_IPS: block_ips,
    ActionKind.ENABLE_LOGGING: enable_logging,
}


def execute(ctx: RunContext, plan: Plan, grant: Grant | None) -> list[ActionResult]:
    """Run exactly the approved actions, in order, each once; stop at the first failure.

    Every action is claimed in the store's action log under (incident, plan digest, action
    digest) before it runs. A repeat — a retry, a re-run, a resumed suspension — finds the claim: an
    action already done is skipped and says so. Until an attempt begins to act, every attempt
    reads the action's target again (`tasks.prechecks`): changed since the approval, nothing
    runs, the action is marked refused and its grant has ended (a later attempt is refused
    too). An attempt that was interrupted after it began to act runs again only through its
    remedy's own check of the target, which is told when that attempt began to act (e.g. a
    rollback first looks for the workflow run it may already have dispatched)."""
    store = ctx.store()
    results = []
    for action in plan.actions:
        require_grant(grant, action)
        raise_if_cancelling(action.describe())
        entry = store.begin_action(plan.digest, action.digest, plan.incident_id, action.kind)
        if entry.status == "done":
            results.append(ActionResult(action.describe(), False,
                                        f"already done at {entry.finished_at:%H:%M:%S} UTC; this repeat was "
                                        f"recognised and skipped ({entry.detail})"))
            continue
        results.append(_attempt(ctx, plan, action, grant, entry))
    return results


def _attempt(ctx: RunContext, plan: Plan, action: PlannedAction, grant: Grant | None,
             entry: ActionRecord) -> ActionResult:
    store, remedy = ctx.store(), REMEDIES[action.kind]
    key = (plan.incident_id, plan.digest, action.digest)
    if entry.status == "refused":
        raise TargetChanged(f"{action.describe()}: refused before ({entry.detail}); the approval for it has ended")
    kwargs = {}
    try:
        if entry.acting_at is None:  # nothing has acted yet: the target must still be as approved
            recheck(ctx, action)
            store.mark_acting(*key)
        elif "interrupted_at" in inspect.signature(remedy.fn).parameters:
            kwargs["interrupted_at"] = entry.acting_at
        _told(ctx, plan, action, "started")
        result = remedy(ctx, action, grant, **kwargs)
    except TargetChanged as exc:
        store.finish_action(*key, "refused", str(exc)[:500])
        _told(ctx, plan, action, "refused", detail=str(exc))
        raise
    except IntegrationError as exc:
        store.finish_action(*key, "failed", str(exc)[:500])
        _told(ctx, plan, action, "failed", detail=str(exc))
        raise RemediationFailed(f"{action.describe()}: {exc}") from None
    except Exception as exc:
        store.finish_action(*key, "failed", f"{type(exc).__name__}: {exc}"[:500])
        _told(ctx, plan, action, "failed", detail=f"{type(exc).__name__}: {exc}")
        raise
    store.finish_action(*key, "done", result.detail[:500])
    _told(ctx, plan, action, "succeeded", grant, result.detail)
    try:
        record_containment(ctx, plan, action)
    except StoreError as exc:  # it is in place all the same; the watch will not see it, so say so
        run_logger().error("%s is in place but not recorded as standing containment: %s", action.describe(), exc)
    return result


def _told(ctx: RunContext, plan: Plan, action: PlannedAction, phase: str, grant: Grant | None = None,
          detail: str = "") -> None:
    """The action's event and counts (tasks/telemetry.py); a store that cannot say which incident
    it is leaves the event out, never the action."""
    try:
        incident = ctx.store().get(plan.incident_id)
    except StoreError as exc:
        run_logger().warning("%s: event %s not emitted: %s", action.describe(), phase, exc)
        incident = None
    telemetry.action(incident, phase, action.kind, action.digest, grant.granted_at if grant else None, detail)
