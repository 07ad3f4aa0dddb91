"""Containment that outlives its run (incidents/containment.py): recorded when an approved
block or log level is applied; reviewed by the incident watch every minute (a raised log level
is turned back when it expires, an expired block is put to a person, a block that another
NetworkPolicy has turned into a widening is reported); lifted or extended by a person
(`runbooks containment`), whose command is the decision and is recorded as such."""

from __future__ import annotations

from datetime import datetime, timezone

from incidents import templates
from incidents.action_params import ActionParams, Block, EnableLogging, IngressDenylistBlock, NetworkPolicyBlock
from incidents.containment import StandingContainment, expiry
from incidents.models import EventKind
from incidents.plans import Plan, PlannedAction
from incidents.store import StoreError
from incidents.timeline_payloads import ContainmentRef
from incidents.vocabulary import CONTAINMENT_KINDS, ActionKind
from integrations.errors import IntegrationError
from integrations.kubernetes_protocol import Kubernetes
from tasks.context import PRODUCTION, RunContext, Scope, SecretNotFound, Wiring
from tasks.notify import comment_on_issue, send_slack
from tasks.security import blocked_now
from tasks.steps import run_logger
from tasks.timeline import record
from tasks.watch_summary import ContainmentReviewed, Handled

WATCH = "incident watch"
_ERRORS = (IntegrationError, SecretNotFound, StoreError)


def record_containment(ctx: RunContext, plan: Plan, action: PlannedAction) -> StandingContainment | None:
    """An applied block or log level, with its expiry (the service's `security.block_hours`
    or `logging_hours`); None for any other action."""
    if action.kind not in CONTAINMENT_KINDS:
        return None
    sec = ctx.service.security
    hours = sec.block_hours if action.kind == ActionKind.BLOCK_IPS else sec.logging_hours
    standing = ctx.store().record_containment(plan.incident_id, plan.environment, plan.service, action.kind,
                                              action.target, action.params,
                                              expiry(datetime.now(timezone.utc), hours))
    record(ctx, plan.incident_id, "runbook", EventKind.CONTAINMENT_RECORDED,
           f"Containment #{standing.id} stands until {templates.stamp(standing.expires_at)}: {standing.describe()}",
           ContainmentRef(containment_id=standing.id))
    return standing


def review_containments(scope: Scope, now: datetime) -> ContainmentReviewed:
    """The watch's pass over standing containment: what it reverted, asked about, reported."""
    done = ContainmentReviewed()
    for standing in scope.store().containments(scope.environment):
        try:
            scope.config.service(standing.service)  # an unknown service fails here, as RunContext.load does
            ctx = scope.ctx(standing.service)
            with ctx.kubernetes() as kube:
                outcome = _review(ctx, kube, standing, now)
        except _ERRORS as exc:
            run_logger().error("Containment #%s not reviewed this sweep: %s", standing.id, exc)
            continue
        if outcome:
            getattr(done, outcome).append(standing.id)
    return done


def _review(ctx: RunContext, kube: Kubernetes, standing: StandingContainment, now: datetime) -> Handled | None:
    params = standing.params
    if isinstance(params, EnableLogging):
        return "reverted" if standing.expired(now) and _revert_logging(ctx, kube, standing, params) else None
    if isinstance(params, Block) and not set(params.cidrs) & set(blocked_now(kube, params)):
        _lift_record(ctx, standing, WATCH, f"{standing.target} no longer blocks these addresses "
                                           "(removed by someone else): nothing stands")
        return "gone"
    if isinstance(params, NetworkPolicyBlock) and _widening(ctx, kube, standing, params):
        return "widening"
    if standing.expired(now) and ctx.store().mark_containment(standing.id, "expiry_asked_at"):
        _tell(ctx, standing, EventKind.CONTAINMENT_EXPIRED,
              f"⏳ CONTAINMENT EXPIRED\nContainment #{standing.id} ({standing.describe()}) was due to end at "
              f"{templates.stamp(standing.expires_at)}. A block is never lifted without a person: lift it with "
              f"`runbooks containment lift {standing.id} --by NAME --reason TEXT`, or keep it with "
              f"`runbooks containment extend {standing.id} --hours N --by NAME`.")
        return "asked"
    return None


def _revert_logging(ctx: RunContext, kube: Kubernetes, standing: StandingContainment,
                    p: EnableLogging) -> bool:
    """Turn the level back, but only if it is still the level the incident set (re-checked)."""
    now_value = kube.get_config_value(p.namespace, p.configmap, p.key)
    if now_value == p.level and p.previous is not None:
        kube.set_config_value(p.namespace, p.configmap, p.key, p.previous)
        note = f"expired: {p.key} turned back from {p.level} to {p.previous}"
    else:
        note = f"expired: {p.key} is {now_value} now (changed by someone else), left as it is"
    _lift_record(ctx, standing, WATCH, note)
    return True


def _widening(ctx: RunContext, kube: Kubernetes, standing: StandingContainment, p: NetworkPolicyBlock) -> bool:
    """Another policy selecting the same pods makes "all but these addresses" a widening:
    reported once, with what to do (lifting it needs a person)."""
    others = kube.policies_selecting(p.namespace, p.labels or {"app": p.app}, p.policy)
    if not others or not ctx.store().mark_containment(standing.id, "widening_reported_at"):
        return False
    ingress = ctx.service.security.ingress
    move = (f", or move the block to the Ingress: `runbooks containment lift {standing.id} --move-to-ingress --by "
            f"NAME --reason TEXT`" if ingress else "")
    _tell(ctx, standing, EventKind.CONTAINMENT_WIDENS,
          f"⚠️ CONTAINMENT WIDENS ACCESS\nContainment #{standing.id}: networkpolicy/{p.policy} admits every address "
          f"but {', '.join(p.cidrs)} to the pods of {p.app}, and {', '.join(others)} now select(s) them too. "
          f"NetworkPolicies add up, so this block voids their restriction. Lift it: `runbooks containment lift "
          f"{standing.id} --by NAME --reason TEXT`{move}.")
    return True


def _tell(ctx: RunContext, standing: StandingContainment, kind: EventKind, text: str) -> None:
    record(ctx, standing.incident_id, WATCH, kind, text.split("\n", 1)[1], ContainmentRef(containment_id=standing.id))
    send_slack(ctx, standing.incident_id, text)
    incident = ctx.store().get(standing.incident_id)
    comment_on_issue(ctx, incident.id, incident.github_repo, incident.github_issue,
                     f"### {templates.markdown_text(text.splitlines()[0])}\n\n"
                     f"{templates.markdown_text(text.split(chr(10), 1)[1], 1200)}")


def _lift_record(ctx: RunContext, standing: StandingContainment, by: str, note: str) -> None:
    if ctx.store().lift_containment(standing.id, by, note):
        record(ctx, standing.incident_id, by, EventKind.CONTAINMENT_LIFTED,
               f"Containment #{standing.id} ({standing.describe()}) lifted by {by}: {note}",
               ContainmentRef(containment_id=standing.id))


def lift(environment: str, containment_id: int, by: str, reason: str, move_to_ingress: bool = False,
         wiring: Wiring = PRODUCTION) -> str:
    """A person lifts a standing containment (their command is the decision, recorded with
    their name): the block's addresses are taken out (other blocks stay), or moved to the
    Ingress's deny list; a log level is turned back if it is still the incident's."""
    store = wiring.store()
    standing = store.containment(containment_id)
    if standing is None or standing.environment != environment:
        raise ValueError(f"no containment #{containment_id} in {environment}")
    if not standing.active:
        raise ValueError(f"containment #{containment_id} was already lifted by {standing.lifted_by}: {standing.note}")
    ctx = RunContext.load(environment, standing.service, wiring)
    params = standing.params
    with ctx.kubernetes() as kube:
        note = _undo(ctx, kube, params, move_to_ingress)
    _lift_record(ctx, standing, by, f"{note} ({reason})")
    if move_to_ingress and isinstance(params, NetworkPolicyBlock) and ctx.service.security.ingress:
        _record_moved(ctx, standing, params, ctx.service.security.ingress, by)
    send_slack(ctx, standing.incident_id, f"🔓 CONTAINMENT LIFTED\nContainment #{standing.id} "
                                          f"({standing.describe()}) lifted by {by}: {note}. Reason: {reason}")
    return note


def _record_moved(ctx: RunContext, standing: StandingContainment, params: NetworkPolicyBlock, ingress: str,
                  by: str) -> None:
    """The block moved to the Ingress stands in its turn, with an expiry of its own."""
    moved = IngressDenylistBlock(strategy="ingress_denylist", namespace=params.namespace, ingress=ingress,
                                 cidrs=params.cidrs)
    again = ctx.store().record_containment(
        standing.incident_id, standing.environment, standing.service, ActionKind.BLOCK_IPS,
        f"ingress/{ingress} (namespace {params.namespace})", moved,
        expiry(datetime.now(timezone.utc), ctx.service.security.block_hours))
    record(ctx, standing.incident_id, by, EventKind.CONTAINMENT_RECORDED,
           f"Containment #{again.id} (moved from #{standing.id} by {by}) stands until "
           f"{templates.stamp(again.expires_at)}: {again.describe()}", ContainmentRef(containment_id=again.id))


def _undo(ctx: RunContext, kube: Kubernetes, params: ActionParams | None, move_to_ingress: bool) -> str:
    if params is None:  # its record no longer reads back: the person lifting it undid it by hand
        return "its recorded parameters do not read back, so nothing was undone here: the one lifting it undoes it"
    if isinstance(params, EnableLogging):
        now_value = kube.get_config_value(params.namespace, params.configmap, params.key)
        if now_value != params.level or params.previous is None:
            return f"{params.key} is {now_value} (not the incident's {params.level}): left as it is"
        kube.set_config_value(params.namespace, params.configmap, params.key, params.previous)
        return f"{params.key} turned back from {params.level} to {params.previous}"
    if isinstance(params, IngressDenylistBlock):
        left = kube.set_ingress_denylist(params.namespace, params.ingress, sorted(
            set(kube.ingress_denylist(params.namespace, params.ingress)) - set(params.cidrs)))
        return f"ingress/{params.ingress} no longer denies {', '.join(params.cidrs)} (still denies: " \
               f"{', '.join(left) or 'nothing'})"
    if not isinstance(params, NetworkPolicyBlock):
        raise TypeError(f"not a containment: {type(params).__name__}")
    moved = ""
    if move_to_ingress:
        ingress = ctx.service.security.ingress
        if not ingress:
            raise ValueError(f"{ctx.service_name} has no Ingress configured (security.ingress) to move the block to")
        kube.set_ingress_denylist(params.namespace, ingress,
                                  sorted(set(kube.ingress_denylist(params.namespace, ingress)) | set(params.cidrs)))
        moved = f"; ingress/{ingress} denies them instead"
    left = kube.unblock_cidrs(params.namespace, params.policy, params.app, params.cidrs)
    return f"networkpolicy/{params.policy} no longer blocks {', '.join(params.cidrs)} " \
           f"({'deleted' if not left else 'still blocks ' + ', '.join(left)}){moved}"


def extend(environment: str, containment_id: int, by: str, hours: float, wiring: Wiring = PRODUCTION) -> datetime:
    store = wiring.store()
    standing = store.containment(containment_id)
    if standing is None or standing.environment != environment or not standing.active:
        raise ValueError(f"no standing containment #{containment_id} in {environment}")
    until = expiry(datetime.now(timezone.utc), hours)
    store.extend_containment(containment_id, until)
    ctx = RunContext.load(environment, standing.service, wiring)
    record(ctx, standing.incident_id, by, EventKind.CONTAINMENT_RECORDED,
           f"Containment #{standing.id} ({standing.describe()}) kept by {by} until {templates.stamp(until)}",
           ContainmentRef(containment_id=standing.id))
    return until
