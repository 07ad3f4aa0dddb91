"""Findings of a diagnosis (what each check saw) and the report built from them. The checks'
names and the facts each reports are in `incidents/check_facts.py`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from incidents import check_facts
from incidents.check_facts import Facts
from incidents.plans import Plan
from incidents.templates import markdown_code, markdown_text

F = TypeVar("F", bound=Facts)


@dataclass(frozen=True, init=False)
class Finding:
    check: str
    ok: bool | None  # None: the check itself could not run
    summary: str
    details: tuple[str, ...]
    data: Facts  # the check's facts model (incidents/check_facts.py)
    log: str | None  # an excerpt shown as a code block

    def __init__(self, check: str, ok: bool | None, summary: str, details: Iterable[str] = (),
                 data: Facts | Mapping[str, Any] | None = None, log: str | None = None) -> None:
        """A mapping for the facts (a stored diagnosis) is validated into the check's model here."""
        given = data if isinstance(data, Facts) else dict(data or {})
        object.__setattr__(self, "check", check)
        object.__setattr__(self, "ok", ok)
        object.__setattr__(self, "summary", summary)
        object.__setattr__(self, "details", tuple(details))
        object.__setattr__(self, "data", check_facts.parse(check, given))
        object.__setattr__(self, "log", log)

    def facts(self, model: type[F]) -> F:
        """The facts as the model a reader expects; a TypeError when the finding is another check's."""
        if not isinstance(self.data, model):
            raise TypeError(f"the {self.check!r} check reports {type(self.data).__name__}, not {model.__name__}")
        return self.data

    def as_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data (the timeline, a stored diagnosis); `Finding(**it)` reads it back."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["details"] = list(self.details)
        data["data"] = self.data.as_dict()
        return data

    @property
    def mark(self) -> str:
        return {True: "✅", False: "❌", None: "⚠️"}[self.ok]


def findings_record(findings: Mapping[str, Finding]) -> dict[str, dict[str, Any]]:
    """A diagnosis as it is stored with its approval request (JSON); `Finding(**each)` reads it back."""
    return {check: finding.as_dict() for check, finding in findings.items()}


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
