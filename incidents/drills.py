"""Game-day drills: the fault catalog (what each fault is and what the playbook expects the
runbook to do about it), scoring against the playbook's targets, and the reports."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from incidents.followup_models import Drill, Scorecard
from incidents.run_result import Judgement
from incidents.templates import markdown_text
from incidents.vocabulary import ActionKind

MTTD_TARGET_SECONDS = 5 * 60  # playbook Success Metrics: MTTD < 5 minutes
MTTR_TARGET_SECONDS_P0 = 30 * 60  # MTTR < 30 minutes for P0
_COMMON_STEPS = ("detected", "issue_opened", "investigating", "diagnosed", "approval_requested", "approval_approved",
                 "action", "recovered", "resolved")


@dataclass(frozen=True)
class Step:
    """One thing done to the target, the way a user or a monitoring system would see it:
    release (a version through CI; `ago_seconds` makes it one that went out earlier, via the
    sandbox), load (requests per second), dependency (down), flag (a feature flag turned on
    with kubectl), replicas (kubectl scale), pg_lock, pg_long_query, pg_connections, pg_idle (a
    short, harmless idle transaction), leaked_credential, config (a value the service rejects
    in its ConfigMap, rolled out by a restart), secret (its credential written again with a
    trailing newline, as `echo` leaves it, rolled out by a restart), memory (the pods outgrow their memory
    limit and are OOM-killed, via the sandbox), latency (ms added to every answer, via the
    sandbox), node (the node most of its pods run on stops reporting, NotReady; "all NotReady":
    every node, via the sandbox), canary (one pod of another version beside the three stable
    ones, behind the same Service, via the sandbox), volume (the service's volume claim filled to
    that many percent, via the sandbox), cache_fill (keys without a TTL written into
    the service's cache, one with a memory limit, until it is full), other_broken (another service of the
    namespace crash-loops: not the target's fault)."""
    kind: str
    value: Any = None
    ago_seconds: float = 0.0
    after_seconds: float = 0.0  # time that passes before this step (an outage goes on a while)

    @property
    def is_fault(self) -> bool:
        """A healthy release and a harmless idle transaction are not faults; the rest are."""
        if self.kind == "release":
            return any(word in str(self.value) for word in ("broken", "errors", "breaks"))
        return self.kind not in ("pg_idle", "other_broken")

    @property
    def sandbox_only(self) -> bool:
        return self.kind in ("load", "dependency", "memory", "latency", "node", "canary", "volume") or (
            self.kind == "release" and self.value != "broken-by-kubectl")

    def describe(self) -> str:
        later = f"{self.after_seconds:g} s later, " if self.after_seconds else ""
        if self.kind == "release":
            what = "a crash-looping image (kubectl set image)" if self.value == "broken-by-kubectl" else self.value
            return f"{later}release {what}" + (f" {self.ago_seconds / 60:g} min ago" if self.ago_seconds else "")
        if self.kind == "volume":
            return f"{later}its volume claim {self.value} % full"
        if self.kind == "cache_fill":
            return f"{later}the cache filled to its memory limit with keys without a TTL"
        if self.kind == "canary":
            return f"{later}a canary of {self.value}: one pod beside the three stable ones"
        if self.kind == "secret":
            return f"{later}its credential rewritten with a trailing newline (echo), rolled out by a restart"
        if self.kind == "other_broken":
            return f"{later}another service ({self.value}) crash-loops (kubectl set image)"
        return later + self.kind.replace("_", " ") + (f" {self.value}" if self.value not in (None, True) else "")


REMEDY, ABSTAIN, NOTHING = "remedy", "abstain", "none"
# Planned without being needed, these make an outage worse: a healthy release rolled back, a
# healthy session ended or its query cancelled, data cleared, credentials or traffic cut.
HARMFUL_WHEN_UNNEEDED = frozenset({ActionKind.ROLLBACK, ActionKind.TERMINATE_SESSIONS, ActionKind.CANCEL_QUERIES,
                                   ActionKind.CLEAR_CACHE, ActionKind.ROTATE_SECRETS, ActionKind.BLOCK_IPS})


@dataclass(frozen=True)
class FaultSpec:
    name: str
    scenario: str
    alertname: str
    severity: str
    description: str
    steps: tuple[Step, ...] = ()
    expected: frozenset[ActionKind] = frozenset()  # the remedy kinds that fix it (outcome remedy)
    outcome: str = REMEDY                    # remedy | abstain (no remedy here fits) | none (nothing is wrong)
    decoy_release: bool = False              # a healthy recent release that is not the cause

    @property
    def sandbox_only(self) -> bool:  # needs the sandbox's own controls to inject
        return any(step.sandbox_only for step in self.steps)

    @property
    def faults(self) -> int:
        """How many faults it combines (a healthy release is not one)."""
        return sum(step.is_fault for step in self.steps)

    @property
    def expected_text(self) -> str:
        return ", ".join(sorted(self.expected)) if self.outcome == REMEDY else self.outcome

    def as_json(self) -> dict[str, Any]:
        """The fault as `runbooks faults --json` prints it (a pinned shape: name, scenario, steps,
        outcome and the remedy kinds expected, plus the alert it raises)."""
        return {"name": self.name, "scenario": self.scenario, "description": self.description,
                "alert": {"alertname": self.alertname, "severity": self.severity},
                "steps": [{"kind": s.kind, "value": s.value, "ago_seconds": s.ago_seconds,
                           "after_seconds": s.after_seconds, "is_fault": s.is_fault, "describe": s.describe()}
                          for s in self.steps],
                "outcome": self.outcome, "expected": sorted(self.expected), "expected_text": self.expected_text,
                "decoy_release": self.decoy_release, "faults": self.faults, "sandbox_only": self.sandbox_only}

    @property
    def expected_steps(self) -> tuple[str, ...]:
        if self.outcome != REMEDY:
            return _COMMON_STEPS[:4]
        extra = ("evidence_captured", "public_draft") if self.scenario == "security-incident" else ()
        return _COMMON_STEPS[:4] + extra + _COMMON_STEPS[4:]


def grade(spec: FaultSpec, kinds: Collection[ActionKind | str], abstained: bool) -> str:
    """right (the expected remedy, abstention or nothing), abstain, wrong (cannot fix it) or
    harmful (makes it worse)."""
    planned = {ActionKind.parse(kind) for kind in kinds}
    if planned & (HARMFUL_WHEN_UNNEEDED - spec.expected):
        return "harmful"
    if spec.outcome == REMEDY and planned == set(spec.expected):
        return "right"
    if spec.outcome == ABSTAIN and abstained:
        return "right"
    if spec.outcome == NOTHING and not planned and not abstained:
        return "right"
    if not planned:
        return "abstain"
    return "wrong"


def fault_spec(name: str, scenario: str, description: str, steps: list[Step], expected: set[str] | str,
          decoy: bool = False) -> FaultSpec:
    alertname, severity = _ALERTS[scenario]
    outcome = expected if isinstance(expected, str) else REMEDY
    kinds = frozenset(ActionKind.parse(k) for k in expected) if isinstance(expected, set) else frozenset()
    return FaultSpec(name, scenario, alertname, severity, description, tuple(steps), kinds, outcome, decoy)


_ALERTS = {"service-down": ("ServiceDown", "P0"), "high-error-rate": ("HighErrorRate", "P1"),
           "database-issues": ("DatabaseIssues", "P1"), "security-incident": ("SecurityIncident", "P0")}
_GOOD = Step("release", "v1.6.0", ago_seconds=600)  # a healthy release ten minutes before the fault
_SD, _ER, _DB, _SEC = "service-down", "high-error-rate", "database-issues", "security-incident"

# Each entry's expected outcome is written down here, before any run grades it.
CATALOG: dict[str, FaultSpec] = {f.name: f for f in (
    fault_spec("bad-deploy", _SD, "deploy an image whose tag ends in -broken; every endpoint answers 503",
          [Step("release", "broken-by-kubectl")], {"rollback"}),
    fault_spec("broken-after-healthy", _SD, "a healthy release half an hour ago, then a crash-looping one",
          [Step("release", "v1.6.0", ago_seconds=1800), Step("release", "v1.6.1-broken")], {"rollback"}),
    fault_spec("bad-config-rollout", _SD, "a ConfigMap value the service rejects, rolled out by kubectl rollout "
                                          "restart (no new image): a rollback would not undo it",
               [Step("config", "verbose")], ABSTAIN),
    fault_spec("release-then-bad-config", _SD, "a healthy release, then a bad ConfigMap value rolled out by a restart",
               [_GOOD, Step("config", "verbose")], ABSTAIN, decoy=True),
    fault_spec("bad-secret-rollout", _SD, "the credential in the service's Secret written again with a trailing "
                                          "newline (echo), rolled out by kubectl rollout restart: the pods exit "
                                          "at start, and a rollback would not undo it",
               [Step("secret", "trailing-newline")], ABSTAIN),
    fault_spec("release-then-bad-secret", _SD, "a healthy release, then a credential with a trailing newline rolled "
                                               "out by a restart", [_GOOD, Step("secret", "trailing-newline")],
               ABSTAIN, decoy=True),
    fault_spec("latency", _SD, "every answer comes 1.4 s late against a 1 s objective: slow, not down",
               [Step("latency", 1400)], ABSTAIN),
    fault_spec("release-then-latency", _SD, "a healthy release, then every answer 1.4 s late",
               [_GOOD, Step("latency", 1400)], ABSTAIN, decoy=True),
    fault_spec("oom-kills", _SD, "the pods outgrow their memory limit and are OOM-killed in a loop, no release: a "
                                 "restart brings the same limit back", [Step("memory", "oom")], ABSTAIN),
    fault_spec("release-then-oom-kills", _SD, "a healthy release, then the pods are OOM-killed in a loop",
               [_GOOD, Step("memory", "oom")], ABSTAIN, decoy=True),
    fault_spec("all-nodes-not-ready", _SD, "every node stops reporting (NotReady): no pod serves and no node takes "
                                           "new ones; no remedy here helps", [Step("node", "all NotReady")], ABSTAIN),
    fault_spec("release-then-all-nodes-not-ready", _SD, "a healthy release, then every node stops reporting",
               [_GOOD, Step("node", "all NotReady")], ABSTAIN, decoy=True),
    fault_spec("scaled-to-zero", _SD, "someone scales the deployment to 0 replicas", [Step("replicas", 0)], {"scale"}),
    fault_spec("release-then-scaled-to-zero", _SD, "a healthy release, then the deployment is scaled to 0",
          [_GOOD, Step("replicas", 0)], {"scale"}, decoy=True),
    fault_spec("db-lock-down", _SD, "a table lock makes /health fail its database check",
          [Step("pg_lock")], {"terminate_sessions"}),
    fault_spec("release-then-db-lock-down", _SD, "a healthy release, then a table lock fails /health's database check",
          [_GOOD, Step("pg_lock")], {"terminate_sessions"}, decoy=True),
    fault_spec("release-and-stale-alert", _SD, "a healthy release and a ServiceDown alert for a service that answers",
          [Step("release", "v1.6.0", ago_seconds=300)], NOTHING, decoy=True),
    fault_spec("broken-release-and-db-lock", _SD, "a crash-looping release and a table lock at once",
          [Step("release", "v1.6.0-broken"), Step("pg_lock")], {"rollback"}),
    fault_spec("error-spike", _ER, "raise the load past the replicas' capacity; the excess requests fail",
          [Step("load", 200)], {"scale"}),
    fault_spec("bad-release-errors", _ER, "a release that fails 30% of what it serves",
          [Step("release", "v1.6.0-errors")], {"rollback"}),
    fault_spec("release-then-dependency", _ER, "a healthy release, then the payments dependency goes down",
          [_GOOD, Step("dependency", True)], {"circuit_breaker"}, decoy=True),
    fault_spec("node-not-ready", _ER, "the node most pods run on stops reporting (NotReady): its pods serve "
                                      "nothing and the rest cannot carry the load; new pods go to a Ready node",
               [Step("node", "NotReady")], {"scale"}),
    fault_spec("release-then-node-not-ready", _ER, "a healthy release, then the node most pods run on goes NotReady",
               [_GOOD, Step("node", "NotReady")], {"scale"}, decoy=True),
    fault_spec("release-then-overload", _ER, "a healthy release, then load beyond capacity",
          [_GOOD, Step("load", 200)], {"scale"}, decoy=True),
    fault_spec("release-then-overload-and-dependency", _ER, "a healthy release, then overload and a dependency down",
          [_GOOD, Step("load", 200), Step("dependency", True)], {"scale", "circuit_breaker"}, decoy=True),
    fault_spec("release-then-feature-flag", _ER, "a healthy release, then a feature flag that fails 40% of requests",
          [_GOOD, Step("flag", "new_checkout")], ABSTAIN, decoy=True),
    fault_spec("bad-release-and-overload", _ER, "a release that fails 30% of requests, and load beyond capacity",
          [Step("release", "v1.6.0-errors"), Step("load", 200)], {"rollback", "scale"}),
    fault_spec("dependency-then-release", _ER, "the dependency goes down, then a healthy release goes out mid-outage",
          [Step("dependency", True), Step("release", "v1.6.0", after_seconds=20)], {"circuit_breaker"}, decoy=True),
    fault_spec("two-bad-releases", _SD, "a crash-looping release, and another crash-looping one 20 s later: the last "
                                   "revision that served is two back",
          [Step("release", "v1.6.0-broken"), Step("release", "v1.6.1-broken", after_seconds=20)], {"rollback"}),
    fault_spec("bad-deploy-and-frontend-broken", _SD, "the frontend crash-loops, then a crash-looping api release: "
                                                     "only the api's own release is rolled back",
               [Step("other_broken", "frontend"), Step("release", "broken-by-kubectl", after_seconds=5)],
               {"rollback"}),
    fault_spec("two-erroring-releases", _ER, "a release that fails 30% of requests, and another as bad 20 s later: "
                                             "the last revision that served cleanly is two back",
               [Step("release", "v1.6.0-errors"), Step("release", "v1.6.1-errors", after_seconds=20)], {"rollback"}),
    fault_spec("overload-then-bad-release", _ER, "load beyond capacity for a while, then a release that fails 30% of "
                                            "requests on its own",
          [Step("load", 200), Step("release", "v1.6.0-errors", after_seconds=30)], {"rollback", "scale"}),
    fault_spec("release-then-dependency-at-once", _ER, "a healthy release, and the payments dependency down seconds "
                                                  "later", [Step("release", "v1.6.0"),
                                                            Step("dependency", True, after_seconds=10)],
          {"circuit_breaker"}, decoy=True),
    fault_spec("release-breaks-dependency-calls", _ER, "a release whose calls to payments are rejected: /health "
                                                       "names payments, which answers everyone else",
               [Step("release", "v1.6.0-breaks-payments")], {"rollback"}),
    fault_spec("canary-errors", _ER, "a canary of a release that fails 30% of what it serves, one pod beside the "
                                     "three stable ones: a rollback of the deployment would not remove it",
               [Step("canary", "v1.6.1-errors")], ABSTAIN),
    fault_spec("release-then-canary-errors", _ER, "a healthy release, then an erroring canary beside it",
               [_GOOD, Step("canary", "v1.6.1-errors")], ABSTAIN, decoy=True),
    fault_spec("volume-full", _ER, "the volume claim the api writes to fills to 98%: its writes (40% of requests) fail "
                                   "whatever version runs", [Step("volume", 98)], ABSTAIN),
    fault_spec("release-then-volume-full", _ER, "a healthy release, then the volume claim full",
               [_GOOD, Step("volume", 98)], ABSTAIN, decoy=True),
    fault_spec("feature-flag", _ER, "a feature flag turned on fails 40% of requests", [Step("flag", "new_checkout")],
          ABSTAIN),
    fault_spec("dependency-down", _ER, "the payments dependency goes down", [Step("dependency", True)],
          {"circuit_breaker"}),
    fault_spec("dependency-down-and-frontend-broken", _ER, "the frontend crash-loops and payments goes down: only "
                                                           "the api's own remedy", [Step("other_broken", "frontend"),
                                                                                    Step("dependency", True)],
               {"circuit_breaker"}),
    fault_spec("pg-lock", _DB, "an idle-in-transaction session holds ACCESS EXCLUSIVE on the service's table, "
                          "3 sessions wait", [Step("pg_lock")], {"terminate_sessions"}),
    fault_spec("pg-connections", _DB, "the application role's connection limit is nearly used up by idle sessions",
          [Step("pg_connections")], {"terminate_sessions"}),
    fault_spec("pg-long-query", _DB, "a query runs far longer than the service's long-query threshold",
          [Step("pg_long_query")], {"cancel_queries"}),
    fault_spec("release-then-pg-connections", _DB, "a healthy release, then the app role's connections nearly used "
                                                   "up by idle sessions", [_GOOD, Step("pg_connections")],
               {"terminate_sessions"}, decoy=True),
    fault_spec("release-then-long-query", _DB, "a healthy release, then a runaway query",
          [_GOOD, Step("pg_long_query")], {"cancel_queries"}, decoy=True),
    fault_spec("pg-lock-and-long-query", _DB, "a lock with waiters and a runaway query at once",
          [Step("pg_long_query"), Step("pg_lock", after_seconds=12)], {"terminate_sessions", "cancel_queries"}),
    fault_spec("cache-memory-pressure", _DB, "keys without a TTL fill the service's Redis cache to its memory "
                                             "limit (a job caching without expiry)", [Step("cache_fill")],
               {"clear_cache"}),
    fault_spec("release-then-cache-memory-pressure", _DB, "a healthy release, then the cache filled to its limit",
               [_GOOD, Step("cache_fill")], {"clear_cache"}, decoy=True),
    fault_spec("pg-lock-and-cache-memory-pressure", _DB, "a table lock with waiters, and the cache full",
               [Step("pg_lock"), Step("cache_fill", after_seconds=5)], {"terminate_sessions", "clear_cache"}),
    fault_spec("release-and-short-transaction", _DB, "a healthy release and a brief idle transaction: nothing is wrong",
          [_GOOD, Step("pg_idle")], NOTHING, decoy=True),
    fault_spec("leaked-credential", _SEC, "a canary credential is planted in the service's secret and reported seen "
                                     "from an outside address", [Step("leaked_credential")],
          {"rotate_secrets", "block_ips", "enable_logging"}),
    fault_spec("release-then-leaked-credential", _SEC, "a healthy release, then a leaked credential",
          [_GOOD, Step("leaked_credential")], {"rotate_secrets", "block_ips", "enable_logging"}, decoy=True),
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
          recovered_at: datetime | None, steps_seen: list[str], outcome: str | None,
          judgement: Judgement | None = None) -> Scorecard:
    """Times, the playbook steps the runbook took, and its judgement (the plan graded against
    the catalog's expected outcome), against the playbook's targets. A fault no remedy here
    fits passes when the runbook abstains and changes nothing; one that needs a remedy, when
    the right plan ran and the service recovered."""
    ttd = _seconds(detected_at, injected_at)
    tta = _seconds(approved_at, detected_at)
    ttr = _seconds(recovered_at, injected_at)
    steps = {step: step in steps_seen for step in fault.expected_steps}
    mttd_met = ttd is not None and ttd < MTTD_TARGET_SECONDS
    needs_remedy = fault.outcome == REMEDY
    mttr_met = not needs_remedy or (ttr is not None and (fault.severity != "P0" or ttr < MTTR_TARGET_SECONDS_P0))
    verdict = grade(fault, set(judgement.kinds), judgement.abstained) if judgement else None
    finished = outcome == "resolved" if needs_remedy else "action" not in steps_seen
    return Scorecard(
        fault=fault.name, scenario=fault.scenario, severity=fault.severity,
        time_to_detect_s=ttd, time_to_approve_s=tta, time_to_recover_s=ttr, mttd_target_s=MTTD_TARGET_SECONDS,
        mttr_target_s=MTTR_TARGET_SECONDS_P0 if fault.severity == "P0" and needs_remedy else None,
        mttd_met=mttd_met, mttr_met=mttr_met, steps=steps, runbook_outcome=outcome, expected=fault.expected_text,
        judgement=verdict, planned=sorted(judgement.kinds) if judgement else [],
        confidence=judgement.confidence if judgement else None,
        passed=bool(mttd_met and mttr_met and all(steps.values()) and finished and verdict == "right"))


def _fmt(value: float | None) -> str:
    return f"{value:.1f} s" if value is not None else "—"


def scorecard_markdown(drill_id: str, environment: str, card: Scorecard, cleanup: list[str]) -> str:
    mark = {True: "✅", False: "❌"}
    rows = "\n".join(f"| {step} | {mark[done]} |" for step, done in card.steps.items())
    mttr_target = f"< {card.mttr_target_s // 60:g} min" if card.mttr_target_s else "(no target below P0)"
    return f"""## Drill {markdown_text(drill_id)}: {card.fault} → {card.scenario} ({environment})

**Result:** {'✅ passed' if card.passed else '❌ failed'} — runbook outcome `{card.runbook_outcome}`

**Judgement:** {card.judgement or 'no plan recorded'} — expected {card.expected or '—'}, planned \
{', '.join(card.planned) or 'nothing'} (confidence {card.confidence or '—'})

| Measure | Value | Playbook target | Met |
|---|---|---|---|
| Time to detect (fault → runbook started) | {_fmt(card.time_to_detect_s)} | < 5 min | {mark[card.mttd_met]} |
| Time to approve (started → approved) | {_fmt(card.time_to_approve_s)} | — | |
| Time to recover (fault → verified recovery) | {_fmt(card.time_to_recover_s)} | {mttr_target} | {mark[card.mttr_met]} |

| Playbook step | Done |
|---|---|
{rows}

**Clean-up:** {markdown_text('; '.join(cleanup) or 'nothing to undo', 600)}
"""


def history_markdown(rows: list[Drill]) -> str:
    """Past drills, newest first, and the trend per scenario (mean times over the last ten)."""
    lines = ["## Drill history", "", "| Started | Fault | Scenario | Env | Status | Detect | Recover | Passed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r.score
        detected, recovered = (s.time_to_detect_s, s.time_to_recover_s) if s else (None, None)
        lines.append(f"| {r.started_at:%Y-%m-%d %H:%M} | {r.fault} | {r.scenario} | {r.environment} | "
                     f"{r.status} | {_fmt(detected)} | {_fmt(recovered)} | {'✅' if s and s.passed else '❌'} |")
    lines += ["", "### Trend per scenario (last 10 drills each)", "",
              "| Scenario | Drills | Passed | Mean detect | Mean recover |", "|---|---|---|---|---|"]
    by_scenario: dict[str, list[Scorecard | None]] = {}
    for r in rows:
        by_scenario.setdefault(r.scenario, []).append(r.score)
    for scenario, scores in sorted(by_scenario.items()):
        recent = scores[:10]
        detect = [s.time_to_detect_s for s in recent if s and s.time_to_detect_s is not None]
        recover = [s.time_to_recover_s for s in recent if s and s.time_to_recover_s is not None]
        lines.append(f"| {scenario} | {len(recent)} | {sum(bool(s and s.passed) for s in recent)} | "
                     f"{_fmt(sum(detect) / len(detect) if detect else None)} | "
                     f"{_fmt(sum(recover) / len(recover) if recover else None)} |")
    return "\n".join(lines)
