"""Game-day drills: the fault catalog (what each fault is and what the playbook expects the
runbook to do about it), scoring against the playbook's targets, and the reports."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from incidents.templates import markdown_text

MTTD_TARGET_SECONDS = 5 * 60  # playbook Success Metrics: MTTD < 5 minutes
MTTR_TARGET_SECONDS_P0 = 30 * 60  # MTTR < 30 minutes for P0
_COMMON_STEPS = ("detected", "issue_opened", "investigating", "diagnosed", "approval_requested", "approval_approved",
                 "action", "recovered", "resolved")


@dataclass(frozen=True)
class FaultSpec:
    name: str
    scenario: str
    alertname: str
    severity: str
    description: str
    sandbox_only: bool = False  # needs the sandbox's own controls to inject

    @property
    def expected_steps(self) -> tuple[str, ...]:
        extra = ("evidence_captured", "public_draft") if self.scenario == "security-incident" else ()
        return _COMMON_STEPS[:4] + extra + _COMMON_STEPS[4:]


CATALOG: dict[str, FaultSpec] = {f.name: f for f in (
    FaultSpec("bad-deploy", "service-down", "ServiceDown", "P0",
              "deploy an image whose tag ends in -broken; every endpoint answers 503"),
    FaultSpec("error-spike", "high-error-rate", "HighErrorRate", "P1",
              "raise the load past the replicas' capacity; the excess requests fail", sandbox_only=True),
    FaultSpec("pg-lock", "database-issues", "DatabaseIssues", "P1",
              "an idle-in-transaction session holds ACCESS EXCLUSIVE on the service's table, 3 sessions wait"),
    FaultSpec("pg-connections", "database-issues", "DatabaseIssues", "P1",
              "the application role's connection limit is nearly used up by idle sessions"),
    FaultSpec("pg-long-query", "database-issues", "DatabaseIssues", "P1",
              "a query runs far longer than the service's long-query threshold"),
    FaultSpec("leaked-credential", "security-incident", "SecurityIncident", "P0",
              "a canary credential is planted in the service's secret and reported seen from an outside address"),
)}
DEFAULT_FAULT = {"service-down": "bad-deploy", "high-error-rate": "error-spike", "database-issues": "pg-lock",
                 "security-incident": "leaked-credential"}


def resolve_fault(scenario_or_fault: str) -> FaultSpec:
    name = DEFAULT_FAULT.get(scenario_or_fault, scenario_or_fault)
    if name not in CATALOG:
        raise ValueError(f"unknown drill {scenario_or_fault!r}: give a scenario ({', '.join(DEFAULT_FAULT)}) "
                         f"or a fault ({', '.join(CATALOG)})")
    return CATALOG[name]


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    return round((later - earlier).total_seconds(), 1) if later and earlier else None


def score(fault: FaultSpec, injected_at: datetime, detected_at: datetime | None, approved_at: datetime | None,
          recovered_at: datetime | None, steps_seen: list[str], outcome: str | None) -> dict:
    """Times and the playbook steps the runbook took, against the playbook's targets."""
    ttd = _seconds(detected_at, injected_at)
    tta = _seconds(approved_at, detected_at)
    ttr = _seconds(recovered_at, injected_at)
    steps = {step: step in steps_seen for step in fault.expected_steps}
    mttd_met = ttd is not None and ttd < MTTD_TARGET_SECONDS
    mttr_met = ttr is not None and (fault.severity != "P0" or ttr < MTTR_TARGET_SECONDS_P0)
    return {"fault": fault.name, "scenario": fault.scenario, "severity": fault.severity,
            "time_to_detect_s": ttd, "time_to_approve_s": tta, "time_to_recover_s": ttr,
            "mttd_target_s": MTTD_TARGET_SECONDS, "mttr_target_s": MTTR_TARGET_SECONDS_P0 if fault.severity == "P0" else None,
            "mttd_met": mttd_met, "mttr_met": mttr_met, "steps": steps, "runbook_outcome": outcome,
            "passed": bool(mttd_met and mttr_met and all(steps.values()) and outcome == "resolved")}


def _fmt(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "—"


def scorecard_markdown(drill_id: str, environment: str, card: dict, cleanup: list[str]) -> str:
    mark = {True: "✅", False: "❌"}
    rows = "\n".join(f"| {step} | {mark[done]} |" for step, done in card["steps"].items())
    mttr_target = f"< {card['mttr_target_s'] // 60} min" if card["mttr_target_s"] else "(no target below P0)"
    return f"""## Drill {markdown_text(drill_id)}: {card['fault']} → {card['scenario']} ({environment})

**Result:** {'✅ passed' if card['passed'] else '❌ failed'} — runbook outcome `{card['runbook_outcome']}`

| Measure | Value | Playbook target | Met |
|---|---|---|---|
| Time to detect (fault → runbook started) | {_fmt(card['time_to_detect_s'])} | < 5 min | {mark[card['mttd_met']]} |
| Time to approve (started → approved) | {_fmt(card['time_to_approve_s'])} | — | |
| Time to recover (fault → verified recovery) | {_fmt(card['time_to_recover_s'])} | {mttr_target} | {mark[card['mttr_met']]} |

| Playbook step | Done |
|---|---|
{rows}

**Clean-up:** {markdown_text('; '.join(cleanup) or 'nothing to undo', 600)}
"""


def history_markdown(rows: list[dict]) -> str:
    """Past drills, newest first, and the trend per scenario (mean times over the last ten)."""
    lines = ["## Drill history", "", "| Started | Fault | Scenario | Env | Status | Detect | Recover | Passed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.get("score") or {}
        lines.append(f"| {r['started_at']:%Y-%m-%d %H:%M} | {r['fault']} | {r['scenario']} | {r['environment']} | "
                     f"{r['status']} | {_fmt(s.get('time_to_detect_s'))} | {_fmt(s.get('time_to_recover_s'))} | "
                     f"{'✅' if s.get('passed') else '❌'} |")
    lines += ["", "### Trend per scenario (last 10 drills each)", "",
              "| Scenario | Drills | Passed | Mean detect | Mean recover |", "|---|---|---|---|---|"]
    by_scenario: dict[str, list[dict]] = {}
    for r in rows:
        by_scenario.setdefault(r["scenario"], []).append(r.get("score") or {})
    for scenario, scores in sorted(by_scenario.items()):
        recent = scores[:10]
        detect = [s["time_to_detect_s"] for s in recent if s.get("time_to_detect_s") is not None]
        recover = [s["time_to_recover_s"] for s in recent if s.get("time_to_recover_s") is not None]
        lines.append(f"| {scenario} | {len(recent)} | {sum(bool(s.get('passed')) for s in recent)} | "
                     f"{_fmt(sum(detect) / len(detect) if detect else None)} | "
                     f"{_fmt(sum(recover) / len(recover) if recover else None)} |")
    return "\n".join(lines)
