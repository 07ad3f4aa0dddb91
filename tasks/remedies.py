"""Every remedy by the kind of action it performs, and the executor that runs exactly an
approved plan, each action once."""

from __future__ import annotations

import inspect

from incidents.plans import Grant, Plan, require_grant
from integrations.errors import IntegrationError
from tasks.cancellation import raise_if_cancelling
from tasks.context import RunContext
from tasks.database import cancel_queries, clear_cache, terminate_sessions
from tasks.deploys import ActionResult, RemediationFailed, restart_deployment, rollback_deployment
from tasks.error_rate import scale_deployment, set_circuit_breaker
from tasks.prechecks import recheck
from tasks.security import block_ips, enable_logging, rotate_secrets

REMEDIES = {
    "rollback": rollback_deployment,
    "rollout_restart": restart_deployment,
    "terminate_sessions": terminate_sessions,
    "cancel_queries": cancel_queries,
    "clear_cache": clear_cache,
    "scale": scale_deployment,
    "circuit_breaker": set_circuit_breaker,
    "rotate_secrets": rotate_secrets,
    "block_ips": block_ips,
    "enable_logging": enable_logging,
}


def execute(ctx: RunContext, plan: Plan, grant: Grant | None) -> list[ActionResult]:
    """Run exactly the approved actions, in order, each once; stop at the first failure.

    Every action is claimed in the store's action log under (incident, plan digest, action
    digest) before it runs. A repeat — a retry, a re-run, a resumed suspension — finds the claim: an
    action already done is skipped and says so; an action that was interrupted (claimed, never
    finished) runs again only through its remedy's own check of the target, which is told when
    the interrupted attempt began (e.g. a rollback first looks for the workflow run it may
    already have dispatched). Before its first attempt each action's target is read again
    (`tasks.prechecks`): changed since the approval, nothing runs and the run escalates."""
    store = ctx.store()
    results = []
    for action in plan.actions:
        remedy = REMEDIES.get(action.kind)
        if remedy is None:
            raise RemediationFailed(f"no remedy implements {action.kind!r}")
        require_grant(grant, action)
        raise_if_cancelling(action.describe())
        entry = store.begin_action(plan.digest, action.digest, plan.incident_id, action.kind)
        if entry.status == "done":
            results.append(ActionResult(action.describe(), False,
                                        f"already done at {entry.finished_at:%H:%M:%S} UTC; this repeat was "
                                        f"recognised and skipped ({entry.detail})"))
            continue
        kwargs = {}
        if not entry.first and "interrupted_at" in inspect.signature(remedy.fn).parameters:
            kwargs["interrupted_at"] = entry.started_at
        try:
            if entry.first:  # a retry of an interrupted attempt meets the target it changed itself
                recheck(ctx, action)
            result = remedy(ctx, action, grant, **kwargs)
        except IntegrationError as exc:
            store.finish_action(plan.incident_id, plan.digest, action.digest, "failed", str(exc)[:500])
            raise RemediationFailed(f"{action.describe()}: {exc}") from None
        except Exception as exc:
            store.finish_action(
                plan.incident_id, plan.digest, action.digest, "failed", f"{type(exc).__name__}: {exc}"[:500]
            )
            raise
        store.finish_action(plan.incident_id, plan.digest, action.digest, "done", result.detail[:500])
        results.append(result)
    return results
