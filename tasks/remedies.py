"""Every remedy by the kind of action it performs, and the executor that runs exactly an
approved plan."""

from __future__ import annotations

from incidents.plans import Grant, PlannedAction
from integrations.errors import IntegrationError
from tasks.context import RunContext
from tasks.database import cancel_queries, clear_cache, terminate_sessions
from tasks.deploys import ActionResult, RemediationFailed, restart_deployment, rollback_deployment
from tasks.error_rate import scale_deployment, set_circuit_breaker
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


def execute(ctx: RunContext, actions: tuple[PlannedAction, ...], grant: Grant) -> list[ActionResult]:
    """Run exactly the approved actions, in order; stop at the first failure."""
    results = []
    for action in actions:
        remedy = REMEDIES.get(action.kind)
        if remedy is None:
            raise RemediationFailed(f"no remedy implements {action.kind!r}")
        try:
            results.append(remedy(ctx, action, grant))
        except IntegrationError as exc:
            raise RemediationFailed(f"{action.describe()}: {exc}") from None
    return results
