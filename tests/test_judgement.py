"""Judgement, fast: each planning rule over the findings each catalog fault produces (no stack),
graded against the catalog's expected outcome; weak plans hold only safe-to-try actions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from incidents.check_facts import BREAKER, CONNECTIONS, DEPLOYS, EVIDENCE, HEALTH, RATE, REACH, ROLLOUT, SESSIONS
from incidents.config import load_environment
from incidents.database_rules import plan_database_issues
from incidents.drills import CATALOG, grade
from incidents.error_rate_rules import plan_high_error_rate
from incidents.evidence import NONE, SAFE_WHEN_UNSURE, STRONG, WEAK, Weighing, settle
from incidents.findings import Finding
from incidents.plans import Plan, PlannedAction
from incidents.security_rules import plan_security_incident
from incidents.service_down_rules import plan_service_down
from tests.action_samples import sample_action

ROOT = Path(__file__).resolve().parent.parent
SERVICE = load_environment("sandbox", ROOT / "config" / "sandbox.yaml").services["api"]
NOW = datetime(2026, 11, 28, 3, 0, tzinfo=timezone.utc)
IMAGE = "registry.sandbox.local/acme/api:{}"
SEEDED = [(1, "v1.4.1", 72 * 3600), (2, "v1.5.0", 48 * 3600)]
GOOD = (3, "v1.6.0", 600)  # a healthy release ten minutes ago


def _at(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat()


# -- what each check reports ------------------------------------------------------------------------
def health(failing: tuple[str, ...] = (), endpoints_fail: bool = False) -> Finding:
    down = endpoints_fail or "database" in failing
    return Finding(HEALTH, not down, "some endpoints failing" if down else "all endpoints answer",
                   data={"failing_checks": list(failing)} if failing else {})


def rollout(version: str, revision: int, ready: bool = True, replicas: int = 3, waiting: str | None = None,
            restarts: int = 0) -> Finding:
    pods = [{"name": f"api-{n}", "ready": ready, "restarts": restarts, "waiting": waiting,
             "image": IMAGE.format(version)} for n in range(replicas)]
    return Finding(ROLLOUT, ready and replicas > 0, f"{replicas if ready else 0}/{replicas} pods ready", data={
        "revision": revision, "image": IMAGE.format(version), "desired_replicas": replicas, "pods": pods})


def deploys(*extra: tuple[int, str, float]) -> Finding:
    revisions = [{"revision": r, "image": IMAGE.format(v), "created": _at(ago), "age": f"{ago / 60:.0f}m"}
                 for r, v, ago in sorted([*SEEDED, *extra], reverse=True)]
    data: dict = {"revisions": revisions, "previous_revision": revisions[1]}
    if extra:
        data["recent_revision"] = revisions[0]
    return Finding(DEPLOYS, not extra, "recent" if extra else "none recent", data=data)


def rate(share: float, rps: float = 50.0, versions: dict | None = None) -> Finding:
    data = {"rate": share, "requests": rps * 2, "errors": share * rps * 2, "rps": rps,
            "versions": {v: dict(zip(("window_requests", "window_errors", "requests", "errors"), c))
                         for v, c in (versions or {}).items()}}
    return Finding(RATE, share < 0.05, f"{share:.0%}", data=data)


def breaker(value: str = "off") -> Finding:
    return Finding(BREAKER, True, f"circuit_breaker={value}", data={"value": value})


def sessions(roots: int = 0, long: int = 0, idle_seconds: float | None = None) -> Finding:
    brief = {"role": "sandbox_app", "state": "idle in transaction", "superuser": False, "query": "LOCK",
             "backend_start": _at(60)}
    data = {"root_blockers": [{**brief, "pid": 100 + n, "seconds": 40.0, "waiters": [200, 201, 202]}
                              for n in range(roots)],
            "idle_in_transaction": ([{**brief, "pid": 300, "seconds": idle_seconds}] if idle_seconds is not None
                                    else [{**brief, "pid": 100 + n, "seconds": 40.0} for n in range(roots)]),
            "long_queries": [{**brief, "state": "active", "pid": 400 + n, "seconds": 30.0} for n in range(long)]}
    return Finding(SESSIONS, not (roots or long), "sessions", data=data)


def connections(pressured: bool = False) -> Finding:
    scope = {"scope": "role sandbox_app", "used": 6, "limit": 6}
    idle = [{"pid": 500 + n, "role": "sandbox_app", "superuser": False, "backend_start": _at(60), "state": "idle",
             "seconds": 60.0} for n in range(5)]
    return Finding(CONNECTIONS, not pressured, "connections",
                   data={"pressured": [scope] if pressured else [], "idle_sessions": idle if pressured else []})


def database(roots: int = 0, long: int = 0, pressured: bool = False, idle_seconds: float | None = None,
             health_failing: bool = False) -> dict[str, Finding]:
    return {HEALTH: health(("database",) if health_failing else ()), REACH: Finding(REACH, True, "answers"),
            CONNECTIONS: connections(pressured), SESSIONS: sessions(roots, long, idle_seconds)}


# -- what the diagnosis sees for each fault of the catalog, and the alert's startsAt -------------------
def _service_down(findings: dict, onset: float | None = 5) -> tuple:
    return "service-down", findings, onset


def _errors(share: float, version: str, revision: int, recent: tuple | None, *, rps: float = 50.0,
            failing: tuple[str, ...] = (), versions: dict, onset: float | None = 5, extra: tuple = ()) -> tuple:
    ready = 3
    findings = {
        RATE: rate(share, rps, versions),
        HEALTH: health(failing),
        ROLLOUT: rollout(version, revision, True, ready),
        DEPLOYS: deploys(*([recent] if recent else []), *extra),
        BREAKER: breaker(),
    }
    return "high-error-rate", findings, onset


CLEAN_OLD = (0.0, 0.0, 180000.0, 100.0)  # v1.5.0: served an hour with 0.05% errors
SCENES = {
    "bad-deploy": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("drill-1a2b3c-broken", 3, False, waiting="CrashLoopBackOff", restarts=2),
            DEPLOYS: deploys((3, "drill-1a2b3c-broken", 8)),
        }
    ),
    "broken-after-healthy": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.6.1-broken", 4, False, waiting="CrashLoopBackOff"),
            DEPLOYS: deploys((3, "v1.6.0", 1800), (4, "v1.6.1-broken", 6)),
        }
    ),
    "scaled-to-zero": _service_down(
        {HEALTH: health(endpoints_fail=True), ROLLOUT: rollout("v1.5.0", 2, replicas=0), DEPLOYS: deploys()}
    ),
    "release-then-scaled-to-zero": _service_down(
        {HEALTH: health(endpoints_fail=True), ROLLOUT: rollout("v1.6.0", 3, replicas=0), DEPLOYS: deploys(GOOD)}
    ),
    "db-lock-down": _service_down({HEALTH: health(("database",)), ROLLOUT: rollout("v1.5.0", 2), DEPLOYS: deploys()}),
    "release-then-db-lock-down": _service_down(
        {HEALTH: health(("database",)), ROLLOUT: rollout("v1.6.0", 3), DEPLOYS: deploys(GOOD)}
    ),
    "release-and-stale-alert": _service_down(
        {HEALTH: health(), ROLLOUT: rollout("v1.6.0", 3), DEPLOYS: deploys((3, "v1.6.0", 300))}
    ),
    "broken-release-and-db-lock": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.6.0-broken", 3, False, waiting="CrashLoopBackOff"),
            DEPLOYS: deploys((3, "v1.6.0-broken", 5)),
        }
    ),
    "error-spike": _errors(0.4, "v1.5.0", 2, None, rps=200, versions={"v1.5.0": (400, 160, 180400, 260)}),
    "bad-release-errors": _errors(
        0.3,
        "v1.6.0-errors",
        3,
        (3, "v1.6.0-errors", 8),
        versions={"v1.6.0-errors": (100, 30, 400, 118), "v1.5.0": CLEAN_OLD},
    ),
    "release-then-dependency": _errors(
        0.5, "v1.6.0", 3, GOOD, failing=("payments",), versions={"v1.6.0": (100, 50, 30400, 200), "v1.5.0": CLEAN_OLD}
    ),
    "release-then-overload": _errors(
        0.4, "v1.6.0", 3, GOOD, rps=200, versions={"v1.6.0": (400, 160, 30800, 320), "v1.5.0": CLEAN_OLD}
    ),
    "release-then-overload-and-dependency": _errors(
        0.7,
        "v1.6.0",
        3,
        GOOD,
        rps=200,
        failing=("payments",),
        versions={"v1.6.0": (400, 280, 30800, 560), "v1.5.0": CLEAN_OLD},
    ),
    "release-then-feature-flag": _errors(
        0.4, "v1.6.0", 3, GOOD, versions={"v1.6.0": (100, 40, 30400, 160), "v1.5.0": CLEAN_OLD}
    ),
    "bad-release-and-overload": _errors(
        0.58,
        "v1.6.0-errors",
        3,
        (3, "v1.6.0-errors", 10),
        rps=200,
        versions={"v1.6.0-errors": (400, 232, 2000, 1150), "v1.5.0": CLEAN_OLD},
    ),
    "dependency-then-release": _errors(
        0.5,
        "v1.6.0",
        3,
        (3, "v1.6.0", 6),
        failing=("payments",),
        onset=26,
        versions={"v1.6.0": (100, 50, 300, 150), "v1.5.0": (0, 0, 181000, 600)},
    ),
    "feature-flag": _errors(0.4, "v1.5.0", 2, None, versions={"v1.5.0": (100, 40, 180500, 300)}),
    "dependency-down": _errors(
        0.5, "v1.5.0", 2, None, failing=("payments",), versions={"v1.5.0": (100, 50, 180500, 400)}
    ),
    "pg-lock": ("database-issues", database(roots=1, health_failing=True), 5),
    "pg-connections": ("database-issues", database(pressured=True), 5),
    "pg-long-query": ("database-issues", database(long=1), 5),
    "release-then-long-query": ("database-issues", database(long=1), 5),  # its checks do not look at releases
    "pg-lock-and-long-query": ("database-issues", database(roots=1, long=1, health_failing=True), 5),
    "release-and-short-transaction": ("database-issues", database(idle_seconds=3.0), 5),
    "leaked-credential": (
        "security-incident",
        {
            EVIDENCE: Finding(
                EVIDENCE,
                True,
                "snapshot",
                data={"secrets": [{"name": "api-credentials", "resource_version": "7"}], "log_level": "info"},
            )
        },
        5,
    ),
}
SCENES["release-then-leaked-credential"] = SCENES["leaked-credential"]
SCENES["release-then-db-lock-down"][1][ROLLOUT] = rollout("v1.6.0", 3)


def plan_for(scenario: str, findings: dict[str, Finding], onset_ago: float | None) -> Plan:
    """The rule of the scenario, then the rule it hands over to (as the lifecycle does)."""
    onset = NOW - timedelta(seconds=onset_ago) if onset_ago is not None else None
    if scenario == "service-down":
        plan = plan_service_down(1, "sandbox", "api", SERVICE, findings, onset=onset, now=NOW)
    elif scenario == "high-error-rate":
        plan = plan_high_error_rate(1, "sandbox", "api", SERVICE, findings, onset=onset, now=NOW)
    elif scenario == "database-issues":
        plan = plan_database_issues(1, "sandbox", "api", SERVICE, findings)
    else:
        plan = plan_security_incident(1, "sandbox", "api", SERVICE, findings, ["203.0.113.66/32"])
    if plan.handover == "database-issues":
        return plan_database_issues(
            1, "sandbox", "api", SERVICE, {**findings, **database(roots=1, health_failing=True)}
        )
    return plan


def test_every_catalog_fault_has_a_scene():
    assert set(SCENES) == set(CATALOG)


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_the_rules_judge_each_catalog_fault_right(name):
    spec = CATALOG[name]
    scenario, findings, onset = SCENES[name]
    assert scenario == spec.scenario
    plan = plan_for(scenario, findings, onset)
    kinds = {a.kind for a in plan.actions}
    verdict = grade(spec, kinds, plan.abstained)
    assert verdict == "right", f"{name}: expected {spec.expected_text}, planned {kinds or plan.confidence}: " \
                               f"{plan.summary} | for {plan.support} | against {plan.against}"
    assert plan.actions or plan.confidence in (STRONG, NONE)
    assert plan.support or plan.abstained, "a plan says why"


def test_a_healthy_release_is_not_rolled_back_on_timing_alone():
    """Errors that began long after a release that served cleanly, with no other cause: abstain."""
    _, findings, _ = SCENES["release-then-feature-flag"]
    plan = plan_for("high-error-rate", findings, 5)
    assert plan.abstained and not plan.actions
    assert any("began after its rollout, not with it" in line for line in plan.against), plan.against


def test_an_alert_that_began_before_the_release_speaks_against_it():
    findings = {
        HEALTH: health(endpoints_fail=True),
        ROLLOUT: rollout("v1.6.0-broken", 3, False, waiting="CrashLoopBackOff"),
        DEPLOYS: deploys((3, "v1.6.0-broken", 60)),
    }
    plan = plan_for("service-down", findings, 600)  # the failure began 9 minutes before the rollout
    assert plan.abstained and any("before revision 3" in line for line in plan.against)
    assert plan_for("service-down", findings, 30).actions[0].kind == "rollback"


def test_failing_pods_of_an_older_revision_do_not_blame_the_new_one():
    findings = {HEALTH: health(endpoints_fail=True), ROLLOUT: rollout("v1.5.0", 3, False, waiting="CrashLoopBackOff"),
                DEPLOYS: deploys((3, "v1.6.0", 60))}
    plan = plan_for("service-down", findings, None)
    assert not {a.kind for a in plan.actions} & {"rollback"}


def test_unreadable_pods_never_blame_a_release():
    findings = {HEALTH: health(endpoints_fail=True), ROLLOUT: Finding(ROLLOUT, None, "could not check: timeout"),
                DEPLOYS: deploys((3, "v1.6.0", 60))}
    plan = plan_for("service-down", findings, 30)
    assert plan.abstained and "could not be read" in plan.summary


def test_without_a_release_failing_pods_get_a_weak_restart_which_is_safe_to_try():
    findings = {HEALTH: health(endpoints_fail=True), ROLLOUT: rollout("v1.5.0", 2, False, restarts=4),
                DEPLOYS: deploys()}
    plan = plan_for("service-down", findings, None)
    assert plan.confidence == WEAK and [a.kind for a in plan.actions] == ["rollout_restart"]


def test_capacity_unknown_gives_a_weak_scale_up():
    service = SERVICE.model_copy(
        update={"scaling": SERVICE.scaling.model_copy(update={"capacity_rps_per_replica": None})}
    )
    _, findings, _ = SCENES["feature-flag"]
    plan = plan_high_error_rate(1, "sandbox", "api", service, findings, now=NOW)
    assert plan.confidence == WEAK and [a.kind for a in plan.actions] == ["scale"]


def _action(kind: str) -> PlannedAction:
    return sample_action(kind)


@pytest.mark.parametrize("kind", ["rollback", "terminate_sessions", "cancel_queries", "clear_cache", "rotate_secrets",
                                  "block_ips", "enable_logging"])
def test_a_weak_plan_never_holds_an_action_outside_the_safe_list(kind):
    head = Plan(1, "api", "sandbox", ())
    plan = settle(head, [_action("scale"), _action(kind)], WEAK, Weighing(["a hunch"], []), "Try this.")
    assert not plan.actions and plan.abstained and kind in plan.summary


def test_weak_plans_from_every_scene_hold_only_safe_actions():
    plans = [plan_for(*scene) for scene in SCENES.values()]
    for plan in plans:
        if plan.confidence == WEAK:
            assert {a.kind for a in plan.actions} <= SAFE_WHEN_UNSURE, plan.summary
    safe = settle(Plan(1, "api", "sandbox", ()), [_action(k) for k in sorted(SAFE_WHEN_UNSURE)], WEAK, Weighing(), "ok")
    assert safe.confidence == WEAK and len(safe.actions) == len(SAFE_WHEN_UNSURE)


def test_a_plan_keeps_its_judgement_through_its_record():
    _, findings, onset = SCENES["bad-release-errors"]
    plan = replace(plan_for("high-error-rate", findings, onset), scenario="high-error-rate")
    again = Plan.from_dict(plan.to_dict())
    assert again == plan and again.digest == plan.digest
    shown = plan.markdown(900)
    assert (
        "**Confidence:** strong" in shown and "**Evidence for**" in shown and "has failed since it went live" in shown
    )
