"""Playbook Scenario 1 (service down): the planning rule and the rollback and scale actions the
other scenarios reuse. Pure functions: the tasks gather the facts, this decides what they mean."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from incidents.action_params import Rollback, RollbackByUndo, RollbackByWorkflow, RolloutRestart, Scale
from incidents.check_facts import Autoscaler
from incidents.config import ServiceConfig
from incidents.evidence import (
    Handover,
    Release,
    ServiceFacts,
    Weighing,
    abstain,
    age,
    config_behind,
    release_tie,
    rollback_target,
    service_facts,
    settle,
    version_of,
)
from incidents.findings import Finding
from incidents.plans import Plan, PlannedAction
from incidents.vocabulary import ActionKind, Confidence


def rollback_action(service: ServiceConfig, environment: str, recent: Release, previous: Release) -> PlannedAction:
    """Roll the deployment back from the `recent` release to the `previous` one, through the
    service's rollback strategy."""
    k = service.kubernetes
    base: dict[str, Any] = {"namespace": k.namespace, "deployment": k.deployment, "from_revision": recent.revision,
                            "to_revision": previous.revision, "to_image": previous.image}
    params: Rollback
    if service.rollback_strategy == "github_workflow":
        gh = service.github
        via = f"GitHub workflow {gh.rollback_workflow} in {gh.repo} (environment={environment})"
        params = RollbackByWorkflow(**base, strategy="github_workflow", repo=gh.repo, workflow=gh.rollback_workflow,
                                    ref=gh.ref, environment=environment)
    else:
        via = "kubectl rollout undo"
        params = RollbackByUndo(**base, strategy="kubernetes_undo")
    return PlannedAction(ActionKind.ROLLBACK, f"deployment/{k.deployment} (namespace {k.namespace})",
                         f"revision {recent.revision} ({recent.image})",
                         f"revision {previous.revision} ({previous.image})", via, params)


def scale_action(
    service: ServiceConfig, current: int, target: int, autoscaler: Autoscaler | None = None
) -> PlannedAction:
    """kubectl scale; or, when an HPA owns the replica count (it would revert a manual scale),
    its bounds: minReplicas up to the target, maxReplicas at least that."""
    k = service.kubernetes
    if autoscaler:
        top = max(autoscaler.max, target)
        return PlannedAction(ActionKind.SCALE, f"horizontalpodautoscaler/{autoscaler.name} (namespace {k.namespace})",
                             f"minReplicas {autoscaler.min}, maxReplicas {autoscaler.max} ({current} running)",
                             f"minReplicas {target}, maxReplicas {top}",
                             "HPA bounds patch (the HPA owns deployment/" + k.deployment + "'s replicas)",
                             Scale(namespace=k.namespace, deployment=k.deployment, hpa=autoscaler.name,
                                   from_=autoscaler.min, to=target, max=top))
    return PlannedAction(ActionKind.SCALE, f"deployment/{k.deployment} (namespace {k.namespace})",
                         f"replicas {current}", f"replicas {target}", "kubectl scale",
                         Scale(namespace=k.namespace, deployment=k.deployment, from_=current, to=target))


# A release whose pods are OOM-killed this soon after it went live runs out of memory at start;
# later, they served first, and memory outgrew the limit for reasons the release need not hold.
OOM_AT_START_SECONDS = 120.0


def live_release(facts: ServiceFacts) -> Release | None:
    """The recent revision, if it is the one running (not one already rolled back)."""
    recent = facts.recent
    if recent is None or (facts.current is not None and facts.current.revision != recent.revision):
        return None
    return recent


def plan_service_down(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                      findings: dict[str, Finding], onset: datetime | None = None, now: datetime | None = None,
                      release_window_seconds: float = 600.0) -> Plan:
    """Playbook Scenario 1, weighed: nothing when the endpoints answer; replicas back when the
    deployment was scaled to zero; the database diagnosis when /health names the database while
    pods are ready; a rollback only when the new revision's pods fail and nothing contradicts it;
    a restart (safe to try) when pods fail without a recent release; otherwise abstain."""
    facts = service_facts(findings, now or datetime.now(timezone.utc), onset)
    head = Plan(incident_id, service_name, environment, (), tuple(f"{f.check}: {f.summary}" for f in findings.values()))
    w = Weighing()
    if facts.endpoints_ok and facts.slow:
        slowest = max(ms for _, ms in facts.slow)
        w.add(True, f"every health endpoint answers, {len(facts.slow)} slower than the {facts.slo_ms:g} ms objective "
                    f"(up to {slowest} ms)")
        return abstain(head, w, f"the service is slow, not down: answers take up to {slowest} ms against a "
                                f"{facts.slo_ms:g} ms objective, and no remedy of this scenario fits that.")
    if facts.endpoints_ok:
        w.add(True, "every health endpoint answers")
        return settle(head, [], Confidence.STRONG, w, "All health endpoints answer: nothing to remediate.")
    release = live_release(facts)
    if facts.desired_replicas == 0:
        target = max(service.scaling.min_replicas, 1)
        w.add(True, f"deployment/{service.kubernetes.deployment} is scaled to 0 replicas: no pod serves")
        if release:
            w.against.append(f"{release.describe()} is not the cause: no pod of any revision runs")
        return settle(head, [scale_action(service, 0, target, facts.autoscaler)], Confidence.STRONG, w,
                      f"The deployment has 0 replicas: scale it back to {target} (the configured minimum).")
    if facts.ready_pods and "database" in facts.failing_checks:
        w.add(True, f"/health names the database as failing while {facts.ready_pods} pods are ready")
        if release:
            w.against.append(f"{release.describe()} is not the cause: its pods are ready and serve")
        return settle(head, [], Confidence.STRONG, w, "The service's pods are ready but its database check fails: the "
                      "database-issues diagnosis takes over.", handover=Handover.DATABASE.value)
    failing = [p for p in facts.pods if not p.ready]
    if facts.pods_known and not failing:
        named = ", ".join(facts.failing_checks)
        w.against.append(f"all {len(facts.pods)} pods are ready"
                         + (f"; /health names {named} failing" if named else ""))
        return abstain(head, w, "the endpoints fail while every pod is ready, and no remedy of this scenario "
                                "fits that.")
    if not facts.pods_known:
        return abstain(head, w, "the pods could not be read, so nothing says what failed"
                                + (f" or whether {release.describe()} is the cause." if release else "."))
    nodes = _lost_to_nodes(head, service, facts, failing, release, w)
    if nodes is not None:
        return nodes
    oom = _oom_killed(facts, failing, w)
    if release and facts.previous:
        plan = _rollback_or_abstain(head, service, environment, facts, release, failing, w, release_window_seconds)
        return replace(plan, summary=f"Abstaining: {oom}; {plan.summary.removeprefix('Abstaining: ')}") \
            if oom and plan.abstained else plan
    if oom:
        return abstain(head, w, f"{oom}: a restart brings the same limit back and they are killed again; the limit "
                                "must be raised, or what outgrows it found.")
    return _restart_plan(head, service, facts, failing, w)


def _lost_to_nodes(head: Plan, service: ServiceConfig, facts: ServiceFacts, failing: list[Any],
                   release: Release | None, w: Weighing) -> Plan | None:
    """Every failing pod sits on a node that stopped reporting, or waits for one: what they run is
    not the cause. The scheduler puts new pods only on Ready nodes, so a restart replaces them
    there at once (not in 5 minutes, when the node's pods are evicted); with no node to take
    them, no remedy here helps. None: the nodes do not explain the failing pods."""
    lost = facts.lost_to_nodes()
    if not lost or len(lost) != len(failing):
        return None
    down = ", ".join(f"{n.name} ({n.pods} pods)" for n in facts.down_nodes)
    w.add(True, f"{len(lost)} of {len(facts.pods)} pods are not ready because "
                + (f"node {down} is NotReady (its kubelet stopped reporting)" if down else "no node took them"))
    if release:
        w.against.append(f"{release.describe()} is not the cause: its pods fail where they run, not for what they run")
    if not (facts.nodes and facts.nodes.schedulable):
        return abstain(head, w, "the pods are lost with their nodes and no node of the cluster takes new pods: "
                                "no remedy here helps until a node is Ready (the platform's on-call).")
    k = service.kubernetes
    action = PlannedAction(ActionKind.ROLLOUT_RESTART, f"deployment/{k.deployment} (namespace {k.namespace})",
                           f"{len(lost)} of {len(facts.pods)} pods on NotReady nodes",
                           "every pod replaced on a Ready node", "kubectl rollout restart",
                           RolloutRestart(namespace=k.namespace, deployment=k.deployment,
                                          revision=facts.current.revision if facts.current else None))
    return settle(head, [action], Confidence.STRONG, w,
                  "The pods are lost with their node, and other nodes take new pods: "
                  "restart the deployment so its pods are replaced there now.")


def _oom_killed(facts: ServiceFacts, failing: list[Any], w: Weighing) -> str | None:
    """The failing pods the kernel killed for using more memory than their limit, said once."""
    oom = [p for p in failing if p.oom_killed]
    if not oom:
        return None
    memory = facts.memory_use()
    said = (f"{len(oom)} of {len(facts.pods)} pods were OOM-killed (memory limit "
            f"{facts.memory_limit or 'not set'}" + (f"; {memory}" if memory else "") + ")")
    w.add(True, said)
    return said


def _restart_plan(head: Plan, service: ServiceConfig, facts: ServiceFacts, failing: list[Any], w: Weighing) -> Plan:
    """Pods fail and no release explains it: a restart, weakly (safe to try, changes no version)."""
    w.add(True, f"{len(failing)} of {len(facts.pods)} pods are not ready and no release went out in the window")
    w.against.append("nothing shows that a restart fixes what made them fail")
    restarts = sum(p.restarts for p in facts.pods)
    k = service.kubernetes
    action = PlannedAction(ActionKind.ROLLOUT_RESTART, f"deployment/{k.deployment} (namespace {k.namespace})",
                           f"{len(facts.pods)} pods ({restarts} restarts)", "every pod replaced",
                           "kubectl rollout restart",
                           RolloutRestart(namespace=k.namespace, deployment=k.deployment,
                                          revision=facts.current.revision if facts.current else None))
    why = "No deployment in the recent window lines up with the failure" if not facts.recent else \
        "The recent deployment is not the one running"
    return settle(head, [action], Confidence.WEAK, w,
                  f"{why}: restart the pods (a restart changes no version or config).")


def _rollback_or_abstain(head: Plan, service: ServiceConfig, environment: str, facts: ServiceFacts, release: Release,
                         failing: list[Any], w: Weighing, window: float) -> Plan:
    config = config_behind(facts, release, window)
    if config:
        w.add(True, config)
        return abstain(head, w, f"{config}: a rollback of the deployment would not undo that change; revert it and "
                                "restart the pods.")
    on_release = [p for p in failing if version_of(p.image) == release.version]
    w.add(bool(on_release) and len(on_release) == len(failing),
          f"{len(on_release)} of {len(facts.pods)} pods run {release.describe()} and are not ready"
          + (f" ({', '.join(sorted({p.waiting for p in on_release if p.waiting}))})"
             if any(p.waiting for p in on_release) else ""),
          f"pods of other revisions fail too ({len(failing) - len(on_release)} of {len(failing)} failing pods)")
    contradicted = len(w.against)
    release_tie(facts, release, facts.previous, window, w)
    lag = facts.since_rollout(release)
    if any(p.oom_killed for p in on_release) and lag is not None and lag > OOM_AT_START_SECONDS:
        w.against.append(f"its pods were OOM-killed {age(lag)} after {release.describe()} went live: they ran "
                         "until their memory outgrew the limit, and timing alone does not tie that to the release")
    elif any(p.oom_killed for p in on_release) and lag is None:
        w.against.append(f"its pods were OOM-killed, and no alert says when the failure began: nothing ties the "
                         f"kills to {release.describe()} rather than to memory outgrowing the limit later")
    if not on_release or len(w.against) > contradicted or len(on_release) != len(failing):
        return abstain(head, w, f"the evidence conflicts on whether {release.describe()} is the cause.")
    target = rollback_target(facts, release, window, w)
    if target is None:
        return abstain(head, w, f"{release.describe()} fails, but no earlier revision is known to have served "
                                "cleanly, so none is a safe target.")
    action = rollback_action(service, environment, release, target)
    went_live = age((facts.now - release.went_live).total_seconds()) if release.went_live else "recently"
    return settle(head, [action], Confidence.STRONG, w,
                  f"Revision {release.revision} went live {went_live} ago and its pods fail: roll back to "
                  f"revision {target.revision}, the last that served cleanly.")
