"""Whether the runbooks' own Kubernetes identity may do what a plan would do. A plan they may
not carry out is not put to an approver (nobody is woken for it); the incident says which
permission is missing. Asked again before each action, as the Role may change meanwhile."""

from __future__ import annotations

from incidents.permissions import Need, needs
from incidents.plans import PlannedAction
from integrations.errors import IntegrationError
from tasks.context import RunContext
from tasks.steps import run_logger


def missing(ctx: RunContext, actions: tuple[PlannedAction, ...] | list[PlannedAction]) -> list[Need]:
    """The needs of `actions` the cluster refuses (none when it cannot be asked: the action
    itself then meets the refusal, and says so)."""
    wanted = list(dict.fromkeys(n for a in actions if not isinstance(a.params, dict) for n in needs(a.params)))
    if not wanted:
        return []
    try:
        with ctx.kubernetes() as kube:
            return [n for n in wanted if not kube.can_i(n.verb, n.group, n.resource, n.namespace, n.name,
                                                        n.subresource)]
    except IntegrationError as exc:
        run_logger().warning("Could not ask Kubernetes which actions the runbooks may take: %s", exc)
        return []


def lacking(needs_refused: list[Need]) -> str:
    return ("the runbooks' Kubernetes role does not allow " + "; ".join(n.describe() for n in needs_refused)
            + " (deploy/kubernetes: bind runbooks-responder in that namespace to let them act)")
