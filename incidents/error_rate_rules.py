"""Playbook Scenario 2 (high error rate): the planning rule."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from incidents.action_params import CircuitBreaker
from incidents.check_facts import PROMETHEUS, Autoscaler
from incidents.config import ServiceConfig
from incidents.evidence import (
    CLOCK_SKEW_SECONDS,
    Handover,
    Release,
    ServiceFacts,
    Weighing,
    abstain,
    config_behind,
    failed_since_live,
    recently_clean,
    release_tie,
    rollback_target,
    service_facts,
    settle,
    version_of,
)
from incidents.findings import Finding
from incidents.plans import Plan, PlannedAction
from incidents.service_down_rules import live_release, rollback_action, scale_action
from incidents.vocabulary import ActionKind, Confidence


def plan_high_error_rate(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                         findings: dict[str, Finding], onset: datetime | None = None, now: datetime | None = None,
                         release_window_seconds: float = 600.0) -> Plan:
    """Playbook Scenario 2, weighed. Each cause the evidence names gets its remedy: a failing
    dependency the circuit breaker, load above capacity a scale-up sized to it, a recent
    revision a rollback only when its errors began with it and the causes found do not explain
    them. Conflicting evidence, or no cause at all, is an abstention."""
    facts = service_facts(findings, now or datetime.now(timezone.utc), onset, service.errors.threshold,
                          service.scaling.capacity_rps_per_replica)
    head = Plan(incident_id, service_name, environment, (), tuple(f"{f.check}: {f.summary}" for f in findings.values()))
    w = Weighing()
    early = _before_causes(head, w, service, facts, findings) or _canary(head, w, service, facts)
    if early is not None:
        return early
    actions: list[PlannedAction] = []
    dependencies = [c for c in facts.failing_checks if c != "database"]
    full = _full_volume(head, w, service, facts, dependencies)
    if full is not None:
        return full
    breaker = _breaker(service, facts, dependencies, w)
    if breaker:
        actions.append(breaker)
    scale = _capacity(service, facts, w)
    if scale:
        actions.append(scale)
    release = live_release(facts)
    rate = facts.error_rate if facts.error_rate is not None else 1.0
    weighed = _weigh_release(head, w, service, environment, facts, release, dependencies, actions, rate,
                             release_window_seconds)
    if weighed is not None:
        return weighed
    if actions:
        return settle(head, actions, Confidence.STRONG, w, _summary(actions, facts, rate))
    return _no_cause(head, w, service, facts, release, rate)


def _before_causes(head: Plan, w: Weighing, service: ServiceConfig, facts: ServiceFacts,
                   findings: dict[str, Finding]) -> Plan | None:
    """The plans settled before any cause is weighed: an unmeasurable rate, a rate below the
    threshold, or a failing database (handed over)."""
    if facts.error_rate is None and not _prometheus_spiking(findings):
        return abstain(head, w, "the error rate could not be measured.")
    if not facts.spiking and not _prometheus_spiking(findings):
        w.add(True, f"the error rate is {facts.error_rate or 0:.1%}, below {service.errors.threshold:.1%}")
        return settle(head, [], Confidence.STRONG, w,
                      f"Error rate is below {service.errors.threshold:.1%}: nothing to remediate.")
    if "database" in facts.failing_checks:
        w.add(True, "/health names the database as failing")
        return settle(head, [], Confidence.STRONG, w,
                      "The service's database check fails: the database-issues diagnosis takes over.",
                      handover=Handover.DATABASE.value)
    return None


def _canary(head: Plan, w: Weighing, service: ServiceConfig, facts: ServiceFacts) -> Plan | None:
    """A version that is none of the deployment's revisions serves beside it (a canary, or any
    other Deployment behind the same Service) and fails, while the deployment's own version
    serves cleanly: the errors are the canary's. A rollback of the deployment would not remove
    it, and no remedy here stops a canary: abstain, naming it and its share of requests."""
    own = facts.traffic_of(facts.current.version) if facts.current else None
    threshold = service.errors.threshold
    if own is None or own.window_rate >= threshold:
        return None
    known = {r.version for r in facts.history}
    total = sum(t.window_requests for t in facts.traffic)
    failing = [t for t in facts.traffic if t.version not in known and t.window_requests and t.window_rate >= threshold]
    if not failing or not total:
        return None
    k = service.kubernetes
    for t in failing:
        pods = ", ".join(p.name for p in facts.pods if version_of(p.image) == t.version)
        w.add(True, f"{t.version}, none of deployment/{k.deployment}'s revisions, serves "
                    f"{t.window_requests / total:.0%} of requests and fails {t.window_rate:.0%} of them"
                    + (f" (pods {pods})" if pods else ""))
    w.add(True, f"{own.version}, the deployment's own version, fails {own.window_rate:.1%} of what it serves")
    w.against.append(f"a rollback of deployment/{k.deployment} would not remove "
                     f"{', '.join(t.version for t in failing)}: it is not one of its revisions")
    names = ", ".join(t.version for t in failing)
    share = sum(t.window_requests for t in failing) / total
    return abstain(head, w, f"the errors come from {names}, a canary serving {share:.0%} of requests beside "
                            f"deployment/{k.deployment}: stop the canary (scale it to 0, or abort it in the rollout "
                            "tool); no remedy here does that.")


def _full_volume(head: Plan, w: Weighing, service: ServiceConfig, facts: ServiceFacts,
                 dependencies: list[str]) -> Plan | None:
    """A volume claim the pods write to is full: its writes fail whatever version runs, and no
    remedy here frees or grows a volume. With no other cause in sight (no overload, no failing
    dependency) that is an abstention naming the claim; otherwise it is said against the plan."""
    if not facts.full_volumes:
        return None
    named = ", ".join(f"{claim} ({used:.0%} used)" for claim, used in facts.full_volumes)
    said = f"volume claim {named}: the writes fail whatever version runs, and no remedy here frees or grows it"
    if facts.overload_share or dependencies:
        w.against.append(said)
        return None
    w.add(True, said)
    return abstain(head, w, f"the volume claim {named} is full: free space on it or expand the claim "
                            f"(deployment/{service.kubernetes.deployment}'s data); a rollback or a scale-up would "
                            "not help.")


def _weigh_release(head: Plan, w: Weighing, service: ServiceConfig, environment: str, facts: ServiceFacts,
                   release: Release | None, dependencies: list[str], actions: list[PlannedAction], rate: float,
                   window: float) -> Plan | None:
    """A recent release the other causes do not explain: a rollback (first) when the errors are
    tied to it, an abstention when the evidence conflicts. None: go on with `actions`."""
    residual = rate - facts.overload_share
    config = config_behind(facts, release, window) if release else None
    if config and not actions:
        w.add(True, config)
        return abstain(head, w, f"{config}: a rollback of the deployment would not undo that change; revert it.")
    if config:
        w.against.append(f"{config}: a rollback would not undo it")
    elif release and facts.previous and (residual >= service.errors.threshold or not facts.overload_share):
        before = len(w.support)
        tied = release_tie(facts, release, facts.previous, window, w)
        if tied and dependencies and not _calls_broken_by(release, facts, dependencies, w, actions):
            return _dependency_or_release(head, w, facts, release, dependencies, actions)
        target = rollback_target(facts, release, window, w) if tied else None
        if target is not None:
            actions.insert(0, rollback_action(service, environment, release, target))
        elif tied and not actions:
            return abstain(head, w, f"the errors began with {release.describe()}, but no earlier revision is known "
                                    "to have served cleanly.")
        elif not actions and len(w.support) > before:
            return _weak_rollback(head, w, service, environment, facts, release, window)
    elif release:
        w.against.append(f"{release.describe()} is not needed to explain the errors: the overload fails "
                         f"{facts.overload_share:.0%} of requests of the {rate:.0%} failing")
    return None


def _weak_rollback(head: Plan, w: Weighing, service: ServiceConfig, environment: str, facts: ServiceFacts,
                   release: Release, window: float) -> Plan:
    """A release that has failed since it went live, but the evidence does not tie the errors
    to it alone (the revision before failed too, and no alert says when the errors began): a
    rollback to the last revision that served cleanly, replaced within the release window, is
    as safe as a restart, so it is offered weakly, with the evidence for and against, behind
    the same approval. Anything that speaks for the release (it served cleanly first, the
    failure began long after it) or a clean revision replaced longer ago is an abstention."""
    lag = facts.since_rollout(release)
    target = rollback_target(facts, release, window, Weighing()) if failed_since_live(facts, release) else None
    timing_against = lag is not None and not -CLOCK_SKEW_SECONDS <= lag <= window
    if target is None or not recently_clean(facts, target, window) or timing_against:
        return abstain(head, w, f"{release.describe()} is a suspect, but the evidence does not tie the errors to it.")
    w.add(True, f"revision {target.revision} ({target.version}) served cleanly by its own record until less than "
                f"{window / 60:g} min ago: a rollback to it brings back what served then")
    action = rollback_action(service, environment, release, target)
    return settle(head, [action], Confidence.WEAK, w,
                  f"{release.describe()} has failed since it went live, but the evidence does not tie the errors to "
                  f"it alone: roll back to revision {target.revision}, the last that served cleanly (as safe as a "
                  "restart; weigh the evidence against before approving).", weak_safe=frozenset({ActionKind.ROLLBACK}))


def _calls_broken_by(release: Release, facts: ServiceFacts, dependencies: list[str], w: Weighing,
                     actions: list[PlannedAction]) -> bool:
    """Every dependency /health names as failing answers its direct probe: only this service's
    calls to it fail, and they began with `release` -- the release is the cause, the breaker
    (taken out of `actions`) would only hide it."""
    if not all(facts.answers_directly(d) for d in dependencies):
        return False
    w.add(True, f"{', '.join(dependencies)} answers directly ({'; '.join(facts.reach_detail(d) for d in dependencies)})"
                f": only this service's calls to it fail, since {release.describe()}")
    actions[:] = [a for a in actions if a.kind != ActionKind.CIRCUIT_BREAKER]
    w.support[:] = [line for line in w.support if line != _breaker_reason(dependencies)]
    return True


def _dependency_or_release(head: Plan, w: Weighing, facts: ServiceFacts, release: Release, dependencies: list[str],
                           actions: list[PlannedAction]) -> Plan:
    """A dependency /health names as failing, and a release the errors began with: the breaker
    is safe whichever is the cause (it sheds the dependency's calls to a fallback; a rollback
    is not safe if the release is healthy), so it is offered alone, and the release stays a
    suspect in the plan -- strongly when the dependency is down for everyone (its direct probe
    fails), weakly when it was not probed. Without a breaker to offer, a person must decide."""
    named = ", ".join(dependencies)
    down = [d for d in dependencies if facts.answers_directly(d) is False]
    if down:
        w.add(True, f"{', '.join(down)} is down for every caller: {'; '.join(facts.reach_detail(d) for d in down)}")
    w.against.append(f"{release.describe()} is a suspect too: the errors began with it; if the breaker does not "
                     "bring them down, a rollback is the next step")
    if not any(a.kind == ActionKind.CIRCUIT_BREAKER for a in actions):
        return abstain(head, w, f"the evidence conflicts: {named} fails, and {release.describe()} has failed since "
                                "it went live.")
    return settle(head, actions, Confidence.STRONG if down else Confidence.WEAK, w,
                  f"{named} fails and the errors began with {release.describe()}: open the circuit breaker first, "
                  "which is safe whichever is the cause.")


def _no_cause(head: Plan, w: Weighing, service: ServiceConfig, facts: ServiceFacts, release: Release | None,
              rate: float) -> Plan:
    """No remedy found: a weak, safe-to-try scale-up when the capacity is not configured,
    otherwise an abstention naming what was ruled out."""
    if facts.capacity_rps is None and facts.desired_replicas is not None and not release:
        guess = _step_up(service, facts.desired_replicas, facts.autoscaler)
        if guess:
            w.add(True, "no failing dependency and no recent release; the capacity per replica is not configured")
            return settle(head, [guess], Confidence.WEAK, w,
                          f"No cause found; the service may be short of capacity: add "
                          f"{service.errors.scale_step} replicas (safe to try, undone by "
                          f"scaling back).")
    return abstain(head, w, f"the error rate is {rate:.0%} and no cause was found: "
                            + ("; ".join(w.against) if w.against else "no failing dependency, no overload, "
                                                                      "no recent release") + ".")


def _prometheus_spiking(findings: dict[str, Finding]) -> bool:
    prom = findings.get(PROMETHEUS)
    return prom is not None and prom.ok is False


def _breaker(service: ServiceConfig, facts: ServiceFacts, dependencies: list[str], w: Weighing) -> PlannedAction | None:
    breaker = service.circuit_breaker
    if not dependencies:
        return None
    if breaker is None:
        w.against.append(f"{', '.join(dependencies)} fails, and the service has no circuit breaker configured")
        return None
    if facts.breaker == breaker.on_value:
        w.against.append(f"{', '.join(dependencies)} fails, and the circuit breaker is already on")
        return None
    w.add(True, _breaker_reason(dependencies))
    where = f"configmap/{breaker.configmap}" if breaker.configmap else "redis flag"
    params = CircuitBreaker(namespace=service.kubernetes.namespace, configmap=breaker.configmap,
                            redis_url_secret=breaker.redis_url_secret, key=breaker.key, value=breaker.on_value,
                            previous=facts.breaker)
    return PlannedAction(ActionKind.CIRCUIT_BREAKER, f"{where} key {breaker.key}", f"{breaker.key}={facts.breaker}",
                         f"{breaker.key}={breaker.on_value}", "flag switch (previous value recorded)", params)


def _capacity(service: ServiceConfig, facts: ServiceFacts, w: Weighing) -> PlannedAction | None:
    """A scale-up sized to the measured load, when the load exceeds what the ready replicas serve."""
    per = service.scaling.capacity_rps_per_replica
    if facts.capacity_rps is None or facts.request_rps is None or facts.desired_replicas is None or not per:
        return None
    if not facts.overload_share:
        w.against.append(f"the load ({facts.request_rps:g} rps) is within the capacity of the ready replicas "
                         f"({facts.capacity_rps:g} rps)")
        return None
    current = facts.desired_replicas
    lost = facts.lost_to_nodes()  # they count in the replicas but serve nothing until replaced
    needed = math.ceil(facts.request_rps * 1.2 / per) + len(lost)
    target = min(max(needed, current + 1), service.scaling.max_replicas)
    if lost and not (facts.nodes and facts.nodes.schedulable):
        w.against.append(f"{len(lost)} pods are lost with their nodes and no node of the cluster takes new pods: "
                         "more replicas would wait too")
        return None
    if lost:
        w.add(True, f"{len(lost)} of {len(facts.pods)} pods serve nothing: their node "
                    f"{', '.join(n.name for n in facts.down_nodes) or '(none took them)'} is NotReady; new pods go "
                    "to Ready nodes")
    share = f"{facts.overload_share:.0%} of requests cannot be served"
    if target <= current:
        w.against.append(f"the load ({facts.request_rps:g} rps) exceeds capacity but {current} replicas is already "
                         f"the configured maximum")
        return None
    w.add(True, f"the load ({facts.request_rps:g} rps) exceeds the capacity of {facts.ready_pods} ready replicas "
                f"({facts.capacity_rps:g} rps at {per:g} each): {share}")
    saturated = facts.cpu_saturation()
    if saturated:
        w.add(True, f"{saturated}: saturated, as the load says")
    return scale_action(service, current, target, facts.autoscaler)


def _breaker_reason(dependencies: list[str]) -> str:
    return f"/health names {', '.join(dependencies)} as failing: the breaker sheds its errors to a fallback"


def _step_up(service: ServiceConfig, current: int, autoscaler: Autoscaler | None) -> PlannedAction | None:
    target = min(current + service.errors.scale_step, service.scaling.max_replicas)
    return scale_action(service, current, target, autoscaler) if target > current else None


def _summary(actions: list[PlannedAction], facts: ServiceFacts, rate: float) -> str:
    parts = {ActionKind.ROLLBACK: lambda a: f"the errors began with {a.before}: roll back to {a.after}",
             ActionKind.CIRCUIT_BREAKER: lambda a: f"a dependency fails: open the circuit breaker ({a.after})",
             ActionKind.SCALE: lambda a: f"the load exceeds capacity: scale {a.before} -> {a.after}"}
    return f"Error rate {rate:.0%}: " + "; ".join(parts[a.kind](a) for a in actions) + "."
