"""Findings of a diagnosis (what each check saw) and the report built from them. The checks'
names of the service-down scenario, which every scenario shares, are here too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from incidents.plans import Plan
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
    if plan is not None:
        parts += ["", plan.judgement_markdown()]
    return "\n".join(parts)
