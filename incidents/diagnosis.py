"""Findings of a diagnosis, the report built from them, and the service-down planning rule.
Pure functions: the tasks gather the facts, this decides what they mean."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from incidents.config import ServiceConfig
from incidents.plans import Plan, PlannedAction
from incidents.templates import markdown_code, markdown_text

HEALTH = "health endpoints"
ROLLOUT = "rollout and pods"
DEPLOYS = "recent deployments"
RUN_LOGS = "failed run logs"
POD_LOGS = "pod logs"


@dataclass(frozen=True)
class Finding:
    check: str
    ok: bool | None  # None: the check itself could not run
    summary: str
    details: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    log: str | None = None  # an excerpt shown as a code block

    @property
    def mark(self) -> str:
        return {True: "✅", False: "❌", None: "⚠️"}[self.ok]


def unavailable(check: str, error: Exception | str) -> Finding:
    return Finding(check, None, f"could not check: {error}")


def report_markdown(title: str, findings: list[Finding], plan: Plan | None, with_plan: bool = True) -> str:
    """The diagnosis report: one section per check (the playbook's Investigation Checklist
    items it covers), then the plan."""
    parts = [f"## {title}", "", "| Check | Result | Summary |", "|---|---|---|"]
    parts += [f"| {f.check} | {f.mark} | {markdown_text(f.summary, 200)} |" for f in findings]
    for f in findings:
        if f.details or f.log:
            parts += ["", f"### {f.mark} {f.check}"]
            parts += [f"- {markdown_text(d, 300)}" for d in f.details]
            if f.log:
                parts += ["", markdown_code(f.log)]
    if not with_plan:
        return "\n".join(parts)
    parts += ["", "## Plan"]
    if plan is None or not plan.actions:
        parts.append(markdown_text(plan.summary if plan else "No remediation planned.", 500))
    else:
        parts.append(markdown_text(plan.summary, 500))
        parts += [f"- {markdown_text(a.describe(), 300)}" for a in plan.actions]
    return "\n".join(parts)


def rollback_action(service: ServiceConfig, environment: str, recent: dict, previous: dict) -> PlannedAction:
    """Roll the deployment back from `recent` to `previous` (revision dicts with revision and
    image), through the service's rollback strategy."""
    k = service.kubernetes
    base = {"namespace": k.namespace, "deployment": k.deployment}
    if service.rollback_strategy == "github_workflow":
        gh = service.github
        via = f"GitHub workflow {gh.rollback_workflow} in {gh.repo} (environment={environment})"
        params = {**base, "strategy": "github_workflow", "repo": gh.repo, "workflow": gh.rollback_workflow,
                  "ref": gh.ref, "environment": environment}
    else:
        via = "kubectl rollout undo"
        params = {**base, "strategy": "kubernetes_undo"}
    params.update(from_revision=recent["revision"], to_revision=previous["revision"], to_image=previous["image"])
    return PlannedAction("rollback", f"deployment/{k.deployment} (namespace {k.namespace})",
                         f"revision {recent['revision']} ({recent['image']})",
                         f"revision {previous['revision']} ({previous['image']})", via, params)


def plan_service_down(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                      findings: dict[str, Finding]) -> Plan:
    """Playbook Scenario 1: roll back when a recent deployment lines up with the failure,
    otherwise restart the pods; nothing when the endpoints answer."""
    health = findings.get(HEALTH)
    rollout = findings.get(ROLLOUT)
    deploys = findings.get(DEPLOYS)
    evidence = tuple(f"{f.check}: {f.summary}" for f in findings.values())
    target = f"deployment/{service.kubernetes.deployment} (namespace {service.kubernetes.namespace})"
    base = {"namespace": service.kubernetes.namespace, "deployment": service.kubernetes.deployment}
    if health is not None and health.ok:
        return Plan(incident_id, service_name, environment, (), evidence,
                    summary="All health endpoints answer: nothing to remediate.")
    recent = (deploys.data.get("recent_revision") if deploys else None) or None
    previous = (deploys.data.get("previous_revision") if deploys else None) or None
    current = rollout.data.get("revision") if rollout else None
    if recent and previous and (current is None or recent["revision"] == current):
        action = rollback_action(service, environment, recent, previous)
        summary = (f"Revision {recent['revision']} went live {recent['age']} ago and the service has failed since: "
                   f"roll back to revision {previous['revision']}.")
        return Plan(incident_id, service_name, environment, (action,), evidence, summary)
    pods = rollout.data.get("pods", []) if rollout else []
    restarts = sum(p.get("restarts", 0) for p in pods)
    action = PlannedAction("rollout_restart", target, f"{len(pods)} pods ({restarts} restarts)",
                           "every pod replaced", "kubectl rollout restart", {**base})
    why = "No deployment in the recent window lines up with the failure" if not recent else \
        "The recent deployment has no earlier revision to return to"
    return Plan(incident_id, service_name, environment, (action,), evidence, f"{why}: restart the pods.")
