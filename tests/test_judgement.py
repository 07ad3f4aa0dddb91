"""Judgement, fast: each planning rule over the findings each catalog fault produces (no stack),
graded against the catalog's expected outcome; weak plans hold only safe-to-try actions."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from incidents.action_params import Rollback, Scale
from incidents.check_facts import (
    BREAKER,
    CACHE,
    CONFIG,
    CONNECTIONS,
    DEPLOYS,
    EVIDENCE,
    HEALTH,
    LATENCY,
    NETWORK,
    NODES,
    RATE,
    REACH,
    ROLLOUT,
    SESSIONS,
    USAGE,
    VOLUMES,
)
from incidents.config import load_environment
from incidents.database_rules import plan_database_issues
from incidents.drills import CATALOG, grade
from incidents.error_rate_rules import plan_high_error_rate
from incidents.evidence import Weighing, settle
from incidents.findings import Finding
from incidents.plans import Plan, PlannedAction
from incidents.security_rules import plan_security_incident
from incidents.service_down_rules import plan_service_down
from incidents.vocabulary import SAFE_WHEN_UNSURE, Confidence
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
def health(failing: tuple[str, ...] = (), endpoints_fail: bool = False, slow_ms: int | None = None) -> Finding:
    down = endpoints_fail or "database" in failing
    data: dict = {"failing_checks": list(failing)} if failing else {}
    if slow_ms:
        data.update(slo_ms=1000, slow=[{"url": f"http://api/{p}", "ok": True, "status": 200, "ms": slow_ms}
                                       for p in ("__ok", "health")])
    return Finding(HEALTH, not down, "some endpoints failing" if down else "all endpoints answer", data=data)


def rollout(version: str, revision: int, ready: bool = True, replicas: int = 3, waiting: str | None = None,
            restarts: int = 0, last: str | None = None) -> Finding:
    pods = [{"name": f"api-{n}", "ready": ready, "restarts": restarts, "waiting": waiting, "last_termination": last,
             "image": IMAGE.format(version)} for n in range(replicas)]
    return Finding(ROLLOUT, ready and replicas > 0, f"{replicas if ready else 0}/{replicas} pods ready", data={
        "revision": revision, "image": IMAGE.format(version), "desired_replicas": replicas, "pods": pods,
        "memory_limit": "256Mi", "oom_killed": replicas if last == "OOMKilled" else 0})


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


def config_changed(*objects: tuple[str, str, float]) -> Finding:
    return Finding(CONFIG, True, "config", data={"objects": [
        {"kind": kind, "name": name, "changed_at": _at(ago)} for kind, name, ago in objects]})


def network(payments: str = "ok") -> Finding:
    detail = "HTTP 200 in 2 ms" if payments == "ok" else "answers HTTP 503"
    return Finding(NETWORK, payments == "ok", detail, data={"dependencies": [
        {"name": "payments", "outcome": payments, "detail": detail, "status": 200 if payments == "ok" else 503}]})


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


def cache(full: bool = False) -> Finding:
    summary = ("memory 1990 KiB (97% of max), 2 clients, 0 evictions in the last 0.5 s (3 since Redis started), "
               "31 keys api:*") if full else "memory 900 KiB (44% of max), 1 clients, 0 evictions, 0 keys api:*"
    return Finding(CACHE, not full, summary, data={"keys": 31 if full else 0, "evicted": 3 if full else 0})


def database(roots: int = 0, long: int = 0, pressured: bool = False, idle_seconds: float | None = None,
             health_failing: bool = False, cache_full: bool = False) -> dict[str, Finding]:
    return {HEALTH: health(("database",) if health_failing else ()), REACH: Finding(REACH, True, "answers"),
            CONNECTIONS: connections(pressured), SESSIONS: sessions(roots, long, idle_seconds),
            CACHE: cache(cache_full)}


# -- what the diagnosis sees for each fault of the catalog, and the alert's startsAt -------------------
def volumes(used: float = 0.35) -> Finding:
    return Finding(VOLUMES, used < 0.9, f"api-data: {used:.0%} used",
                   data={"volumes": [{"claim": "api-data", "used_ratio": used}], "full_at": 0.9})


def _with(scene: tuple, findings: dict[str, Finding]) -> tuple:
    scenario, found, onset = scene
    return scenario, {**found, **findings}, onset


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
    "bad-config-rollout": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.5.0", 3, False, waiting="CrashLoopBackOff", restarts=1, last="Error"),
            DEPLOYS: deploys((3, "v1.5.0", 5)),  # kubectl rollout restart: a new revision, the same image
            CONFIG: config_changed(("configmap", "api-config", 7), ("secret", "api-credentials", 72 * 3600)),
        }, onset=4),
    "release-then-bad-config": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.6.0", 4, False, waiting="CrashLoopBackOff", restarts=1, last="Error"),
            DEPLOYS: deploys(GOOD, (4, "v1.6.0", 5)),
            CONFIG: config_changed(("configmap", "api-config", 7)),
        }, onset=4),
    "bad-secret-rollout": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.5.0", 3, False, waiting="CrashLoopBackOff", restarts=1, last="Error"),
            DEPLOYS: deploys((3, "v1.5.0", 5)),
            CONFIG: config_changed(("configmap", "api-config", 72 * 3600), ("secret", "api-credentials", 6)),
        }, onset=4),
    "release-then-bad-secret": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.6.0", 4, False, waiting="CrashLoopBackOff", restarts=1, last="Error"),
            DEPLOYS: deploys(GOOD, (4, "v1.6.0", 5)),
            CONFIG: config_changed(("configmap", "api-config", 72 * 3600), ("secret", "api-credentials", 6)),
        }, onset=4),
    "latency": _service_down({HEALTH: health(slow_ms=1412), ROLLOUT: rollout("v1.5.0", 2), DEPLOYS: deploys()}),
    "release-then-latency": _service_down(
        {HEALTH: health(slow_ms=1407), ROLLOUT: rollout("v1.6.0", 3), DEPLOYS: deploys(GOOD)}),
    "oom-kills": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.5.0", 2, False, waiting="CrashLoopBackOff", restarts=2, last="OOMKilled"),
            DEPLOYS: deploys(),
        }
    ),
    "release-then-oom-kills": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.6.0", 3, False, waiting="CrashLoopBackOff", restarts=2, last="OOMKilled"),
            DEPLOYS: deploys(GOOD),
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
    "two-bad-releases": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("v1.6.1-broken", 4, False, waiting="CrashLoopBackOff", restarts=1),
            DEPLOYS: deploys((3, "v1.6.0-broken", 25), (4, "v1.6.1-broken", 5)),
        }, onset=25),
    "bad-deploy-and-frontend-broken": _service_down(
        {
            HEALTH: health(endpoints_fail=True),
            ROLLOUT: rollout("drill-4d5e6f-broken", 3, False, waiting="CrashLoopBackOff", restarts=1),
            DEPLOYS: deploys((3, "drill-4d5e6f-broken", 4)),
        }, onset=9),
    "two-erroring-releases": _errors(
        0.3, "v1.6.1-errors", 4, (4, "v1.6.1-errors", 6), onset=26, extra=((3, "v1.6.0-errors", 26),),
        versions={"v1.6.1-errors": (100, 30, 300, 90), "v1.6.0-errors": (0, 0, 1000, 300), "v1.5.0": CLEAN_OLD}),
    # v1.5.0 served 30 s of the overload (40% of it failing) before v1.6.0-errors went live
    "overload-then-bad-release": _errors(
        0.7, "v1.6.0-errors", 3, (3, "v1.6.0-errors", 8), rps=200, onset=38,
        versions={"v1.6.0-errors": (400, 280, 1600, 1100), "v1.5.0": (0, 0, 6000, 2400)}),
    "release-then-dependency-at-once": _errors(
        0.5, "v1.6.0", 3, (3, "v1.6.0", 14), failing=("payments",), onset=4,
        versions={"v1.6.0": (100, 50, 700, 300), "v1.5.0": CLEAN_OLD}),
    "release-breaks-dependency-calls": _errors(
        0.5, "v1.6.0-breaks-payments", 3, (3, "v1.6.0-breaks-payments", 8), failing=("payments",),
        versions={"v1.6.0-breaks-payments": (100, 50, 400, 200), "v1.5.0": CLEAN_OLD}),
    "canary-errors": _errors(  # one canary pod of four: a quarter of the requests, 30 % of them fail
        0.075, "v1.5.0", 2, None, versions={"v1.5.0": (75, 0, 180075, 100), "v1.6.1-errors": (25, 7.5, 400, 120)}),
    "release-then-canary-errors": _errors(
        0.075, "v1.6.0", 3, GOOD, versions={"v1.6.0": (75, 0, 30075, 10), "v1.6.1-errors": (25, 7.5, 400, 120),
                                            "v1.5.0": CLEAN_OLD}),
    "volume-full": _with(_errors(0.4, "v1.5.0", 2, None, versions={"v1.5.0": (100, 40, 180500, 300)}),
                         {VOLUMES: volumes(0.98)}),
    "release-then-volume-full": _with(_errors(0.4, "v1.6.0", 3, GOOD, versions={"v1.6.0": (100, 40, 30400, 160),
                                                                                "v1.5.0": CLEAN_OLD}),
                                      {VOLUMES: volumes(0.98)}),
    "feature-flag": _errors(0.4, "v1.5.0", 2, None, versions={"v1.5.0": (100, 40, 180500, 300)}),
    "dependency-down": _errors(
        0.5, "v1.5.0", 2, None, failing=("payments",), versions={"v1.5.0": (100, 50, 180500, 400)}
    ),
    "dependency-down-and-frontend-broken": _errors(
        0.5, "v1.5.0", 2, None, failing=("payments",), versions={"v1.5.0": (100, 50, 180500, 400)}),
    "pg-lock": ("database-issues", database(roots=1, health_failing=True), 5),
    "pg-connections": ("database-issues", database(pressured=True), 5),
    "pg-long-query": ("database-issues", database(long=1), 5),
    "release-then-pg-connections": ("database-issues", database(pressured=True), 5),
    "release-then-long-query": ("database-issues", database(long=1), 5),  # its checks do not look at releases
    "pg-lock-and-long-query": ("database-issues", database(roots=1, long=1, health_failing=True), 5),
    "cache-memory-pressure": ("database-issues", database(cache_full=True), 5),
    "release-then-cache-memory-pressure": ("database-issues", database(cache_full=True), 5),
    "pg-lock-and-cache-memory-pressure": ("database-issues", database(roots=1, health_failing=True, cache_full=True),
                                          5),
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
SCENES["release-breaks-dependency-calls"][1][NETWORK] = network("ok")  # payments answers everyone else
SCENES["release-then-db-lock-down"][1][ROLLOUT] = rollout("v1.6.0", 3)


# -- nodes: the scheduler spread 3 pods over two nodes (1, 2, 1) ------------------------------------
def on_nodes(version: str, revision: int, down: set[str]) -> Finding:
    """The pods as the API shows them when `down` nodes stopped reporting: not Ready, their
    containers' last reported state unchanged (running, no restarts)."""
    data = rollout(version, revision).data.as_dict()
    pods = [{**pod, "node": node, "ready": node not in down}
            for pod, node in zip(data["pods"], ("node-1", "node-2", "node-1"))]
    ready = sum(p["ready"] for p in pods)
    return Finding(ROLLOUT, ready == 3, f"{ready}/3 pods ready", data={**data, "pods": pods})


def nodes(down: set[str], schedulable: bool = True) -> Finding:
    states = [{"name": name, "ready": "Unknown" if name in down else "True", "pods": pods,
               "unschedulable": name in down} for name, pods in (("node-1", 2), ("node-2", 1))]
    return Finding(NODES, not down, "nodes", data={"nodes": states, "schedulable": schedulable})


for _name, _recent, _version, _revision in (("all-nodes-not-ready", None, "v1.5.0", 2),
                                            ("release-then-all-nodes-not-ready", GOOD, "v1.6.0", 3)):
    SCENES[_name] = _service_down({HEALTH: health(endpoints_fail=True),
                                   ROLLOUT: on_nodes(_version, _revision, {"node-1", "node-2"}),
                                   DEPLOYS: deploys(*([_recent] if _recent else [])),
                                   NODES: nodes({"node-1", "node-2"}, schedulable=False)})
SCENES["node-not-ready"] = _errors(0.2, "v1.5.0", 2, None, versions={"v1.5.0": (100, 20, 180100, 120)})
SCENES["release-then-node-not-ready"] = _errors(0.2, "v1.6.0", 3, GOOD,
                                                versions={"v1.6.0": (100, 20, 30100, 120), "v1.5.0": CLEAN_OLD})
for _name in ("node-not-ready", "release-then-node-not-ready"):
    _version, _revision = ("v1.6.0", 3) if _name.startswith("release") else ("v1.5.0", 2)
    SCENES[_name][1].update({ROLLOUT: on_nodes(_version, _revision, {"node-1"}), NODES: nodes({"node-1"})})


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
    assert plan.actions or plan.confidence in (Confidence.STRONG, Confidence.NONE)
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
    assert plan.confidence == Confidence.WEAK and [a.kind for a in plan.actions] == ["rollout_restart"]


def test_capacity_unknown_gives_a_weak_scale_up():
    service = SERVICE.model_copy(
        update={"scaling": SERVICE.scaling.model_copy(update={"capacity_rps_per_replica": None})}
    )
    _, findings, _ = SCENES["feature-flag"]
    plan = plan_high_error_rate(1, "sandbox", "api", service, findings, now=NOW)
    assert plan.confidence == Confidence.WEAK and [a.kind for a in plan.actions] == ["scale"]


def _action(kind: str) -> PlannedAction:
    return sample_action(kind)


@pytest.mark.parametrize("kind", ["rollback", "terminate_sessions", "cancel_queries", "clear_cache", "rotate_secrets",
                                  "block_ips", "enable_logging"])
def test_a_weak_plan_never_holds_an_action_outside_the_safe_list(kind):
    head = Plan(1, "api", "sandbox", ())
    plan = settle(head, [_action("scale"), _action(kind)], Confidence.WEAK, Weighing(["a hunch"], []), "Try this.")
    assert not plan.actions and plan.abstained and kind in plan.summary


def test_weak_plans_from_every_scene_hold_only_safe_actions():
    """With the alert or without it; the one weak rollback is to a revision replaced minutes ago."""
    plans = [plan_for(s, f, onset) for s, f, onset in SCENES.values()] + \
        [plan_for(s, f, None) for s, f, _ in SCENES.values()]
    for plan in plans:
        if plan.confidence == Confidence.WEAK:
            assert {a.kind for a in plan.actions} <= SAFE_WHEN_UNSURE | {"rollback"}, plan.summary
            assert "rollback" not in {a.kind for a in plan.actions} or "served cleanly by its own record until " \
                "less than 10 min ago" in " ".join(plan.support), plan.support
    safe = settle(Plan(1, "api", "sandbox", ()), [_action(k) for k in sorted(SAFE_WHEN_UNSURE)], Confidence.WEAK,
                  Weighing(), "ok")
    assert safe.confidence == Confidence.WEAK and len(safe.actions) == len(SAFE_WHEN_UNSURE)


def test_a_plan_keeps_its_judgement_through_its_record():
    _, findings, onset = SCENES["bad-release-errors"]
    plan = replace(plan_for("high-error-rate", findings, onset), scenario="high-error-rate")
    again = Plan.from_dict(plan.to_dict())
    assert again == plan and again.digest == plan.digest
    shown = plan.markdown(900)
    assert (
        "**Confidence:** strong" in shown and "**Evidence for**" in shown and "has failed since it went live" in shown
    )


def test_two_bad_releases_in_a_row_roll_back_past_both_to_the_last_that_served():
    """The previous revision crash-looped too, seconds before the newest replaced it: the target is
    the revision that served for days, and the plan says why the previous one was passed over."""
    plan = plan_for(*SCENES["two-bad-releases"])
    (action,) = plan.actions
    params = action.params_as(Rollback)
    assert (params.from_revision, params.to_revision) == (4, 2), params
    assert params.to_image.endswith(":v1.5.0")
    assert any("passed over: revision 3 (v1.6.0-broken) was live only 0m20s" in line for line in plan.support), \
        plan.support


def test_no_revision_with_a_record_of_serving_is_no_rollback():
    """Every earlier revision was live for seconds only: none is a known-good target."""
    findings = {HEALTH: health(endpoints_fail=True),
                ROLLOUT: rollout("v1.6.1-broken", 4, False, waiting="CrashLoopBackOff"),
                DEPLOYS: Finding(DEPLOYS, False, "recent", data={"revisions": [
                    {"revision": r, "image": IMAGE.format(v), "created": _at(ago)}
                    for r, v, ago in ((4, "v1.6.1-broken", 5), (3, "v1.6.0-broken", 25), (2, "v1.5.9", 40))],
                    "recent_revision": {"revision": 4, "image": IMAGE.format("v1.6.1-broken"), "created": _at(5)},
                    "previous_revision": {"revision": 3, "image": IMAGE.format("v1.6.0-broken"), "created": _at(25)}})}
    plan = plan_for("service-down", findings, 25)
    assert plan.abstained and not plan.actions
    assert any("no earlier revision has a record of serving cleanly" in line for line in plan.against), plan.against


def test_a_revision_that_failed_by_its_own_traffic_is_never_the_target():
    _, findings, onset = SCENES["bad-release-errors"]
    findings = {**findings, DEPLOYS: deploys((3, "v1.6.0-errors", 8)),
                RATE: rate(0.3, versions={"v1.6.0-errors": (100, 30, 400, 118), "v1.5.0": CLEAN_OLD,
                                          "v1.4.1": (0, 0, 1000, 10)})}
    plan = plan_for("high-error-rate", findings, onset)
    assert [a.params_as(Rollback).to_revision for a in plan.actions if a.kind == "rollback"] == [2]
    bad_old = {**findings, RATE: rate(0.3, versions={"v1.6.0-errors": (100, 30, 400, 118),
                                                     "v1.5.0": (0, 0, 1000, 300), "v1.4.1": (0, 0, 1000, 10)})}
    assert plan_for("high-error-rate", bad_old, onset).abstained  # v1.5.0 failed too: the errors are not new


def test_an_erroring_release_under_overload_gets_a_rollback_and_a_scale_up():
    """The previous revision's errors under the same overload are the overload's, not its own."""
    plan = plan_for(*SCENES["overload-then-bad-release"])
    assert [a.kind for a in plan.actions] == ["rollback", "scale"] and plan.confidence == Confidence.STRONG
    assert any("fails 30% more on its own" in line for line in plan.support), plan.support


def test_a_dependency_down_right_after_a_release_gets_the_breaker_that_is_safe_for_both():
    plan = plan_for(*SCENES["release-then-dependency-at-once"])
    assert [a.kind for a in plan.actions] == ["circuit_breaker"] and plan.confidence == Confidence.WEAK
    assert any("is a suspect too" in line and "a rollback is the next step" in line for line in plan.against)


def test_runbooks_faults_json_lists_the_catalog_with_steps_and_outcomes(capsys):
    """`runbooks faults --json` (pinned): one object per fault, with at least its name, steps and
    expected outcome, in the catalog's order."""
    import json

    from deployments.cli import main

    assert main(["faults", "--json"]) == 0
    faults = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in faults] == list(CATALOG)
    two = next(f for f in faults if f["name"] == "two-bad-releases")
    assert two["outcome"] == "remedy" and two["expected"] == ["rollback"] and two["scenario"] == "service-down"
    assert [(s["kind"], s["value"], s["after_seconds"]) for s in two["steps"]] == [
        ("release", "v1.6.0-broken", 0.0), ("release", "v1.6.1-broken", 20.0)]
    assert {f["outcome"] for f in faults} == {"remedy", "abstain", "none"}


def test_oom_kills_are_named_and_never_met_with_a_restart():
    """A restart brings the same memory limit back: the plan abstains and says what it found."""
    for name in ("oom-kills", "release-then-oom-kills"):
        plan = plan_for(*SCENES[name])
        assert plan.abstained and not plan.actions, (name, plan.summary)
        assert "3 of 3 pods were OOM-killed (memory limit 256Mi)" in plan.summary, (name, plan.summary)
    crashing = plan_for("service-down", {HEALTH: health(endpoints_fail=True), DEPLOYS: deploys(),
                                         ROLLOUT: rollout("v1.5.0", 2, False, restarts=4, last="Error")}, None)
    assert [a.kind for a in crashing.actions] == ["rollout_restart"]  # an ordinary crash still gets its weak restart
    leaking_release = plan_for("service-down", {
        HEALTH: health(endpoints_fail=True), DEPLOYS: deploys((3, "v1.6.0-broken", 8)),
        ROLLOUT: rollout("v1.6.0-broken", 3, False, waiting="CrashLoopBackOff", last="OOMKilled")}, 5)
    assert [a.kind for a in leaking_release.actions] == ["rollback"]  # a release that leaks is rolled back


def test_a_bad_config_rolled_by_a_restart_is_named_and_not_rolled_back():
    """A rollback of the deployment does not undo a ConfigMap: abstain, naming the change."""
    for name in ("bad-config-rollout", "release-then-bad-config"):
        plan = plan_for(*SCENES[name])
        assert plan.abstained and not plan.actions, (name, plan.summary)
        assert "configmap/api-config changed 0m02s before revision" in plan.summary, plan.summary
        assert "rolled out with the same image" in plan.summary and "secret/api-credentials" not in plan.summary
    _, findings, onset = SCENES["bad-deploy"]  # a new image: the config check changes nothing
    plan = plan_for("service-down", {**findings, CONFIG: config_changed(("configmap", "api-config", 9))}, onset)
    assert [a.kind for a in plan.actions] == ["rollback"]


def test_a_bad_secret_rolled_by_a_restart_is_named_and_not_rolled_back():
    """A Secret changed and rolled out by a restart: the same image as before, so a rollback of
    the deployment would bring the same credential back. Abstain, naming the Secret alone."""
    for name in ("bad-secret-rollout", "release-then-bad-secret"):
        plan = plan_for(*SCENES[name])
        assert plan.abstained and not plan.actions, (name, plan.summary)
        assert "secret/api-credentials changed 0m01s before revision" in plan.summary, plan.summary
        assert "configmap/api-config" not in plan.summary, plan.summary
    _, findings, onset = SCENES["broken-after-healthy"]  # a new image: the Secret's change is not the suspect
    plan = plan_for("service-down", {**findings, CONFIG: config_changed(("secret", "api-credentials", 9))}, onset)
    assert [a.kind for a in plan.actions] == ["rollback"], plan.summary


def test_an_erroring_canary_is_named_with_its_share_and_nothing_of_the_deployment_is_rolled_back():
    for name in ("canary-errors", "release-then-canary-errors"):
        plan = plan_for(*SCENES[name])
        assert plan.abstained and not plan.actions, (name, plan.summary)
        assert "the errors come from v1.6.1-errors, a canary serving 25% of requests" in plan.summary, plan.summary
        assert any("fails 30% of them" in line for line in plan.support), plan.support
    # the same version once rolled out by the deployment itself is a release, not a canary
    _, findings, onset = SCENES["bad-release-errors"]
    assert [a.kind for a in plan_for("high-error-rate", findings, onset).actions] == ["rollback"]
    # and a canary serving cleanly beside a failing deployment is not blamed
    _, findings, onset = SCENES["feature-flag"]
    quiet = {**findings, RATE: rate(0.4, 50, {"v1.5.0": (75, 30, 180500, 300), "v1.6.1": (25, 0, 400, 0)})}
    assert "canary" not in plan_for("high-error-rate", quiet, onset).summary


def test_a_full_volume_is_named_and_neither_rolled_back_nor_scaled():
    for name in ("volume-full", "release-then-volume-full"):
        plan = plan_for(*SCENES[name])
        assert plan.abstained and not plan.actions, (name, plan.summary)
        assert "the volume claim api-data (98% used) is full" in plan.summary, plan.summary
    # with an overload too, the scale-up still goes ahead, the full volume said against it
    scenario, findings, onset = SCENES["error-spike"]
    plan = plan_for(scenario, {**findings, VOLUMES: volumes(0.98)}, onset)
    assert [a.kind for a in plan.actions] == ["scale"], plan.summary
    assert any("volume claim api-data (98% used)" in line for line in plan.against), plan.against
    # a volume below its threshold changes nothing
    scenario, findings, onset = SCENES["feature-flag"]
    assert "volume" not in plan_for(scenario, {**findings, VOLUMES: volumes(0.6)}, onset).summary


def test_a_dependency_probed_directly_separates_a_release_that_breaks_its_calls_from_an_outage():
    """/health names payments failing and the errors began with a release: payments answering
    its direct probe puts it on the release (rollback, no breaker); payments down for everyone
    gets the breaker with confidence; not probed, the breaker weakly."""
    _, findings, onset = SCENES["release-breaks-dependency-calls"]
    plan = plan_for("high-error-rate", findings, onset)
    assert [a.kind for a in plan.actions] == ["rollback"] and plan.confidence == Confidence.STRONG
    assert any("payments answers directly (HTTP 200 in 2 ms)" in line for line in plan.support), plan.support
    down = plan_for("high-error-rate", {**findings, NETWORK: network("http_error")}, onset)
    assert [a.kind for a in down.actions] == ["circuit_breaker"] and down.confidence == Confidence.STRONG
    assert any("payments is down for every caller: answers HTTP 503" in line for line in down.support)
    unprobed = plan_for("high-error-rate", {k: v for k, v in findings.items() if k != NETWORK}, onset)
    assert [a.kind for a in unprobed.actions] == ["circuit_breaker"] and unprobed.confidence == Confidence.WEAK


def test_slow_is_a_finding_not_down():
    plan = plan_for(*SCENES["latency"])
    assert plan.abstained and "slow, not down: answers take up to 1412 ms against a 1000 ms objective" in plan.summary
    _, findings, onset = SCENES["release-and-stale-alert"]
    assert not plan_for("service-down", findings, onset).abstained  # fast and answering: nothing to do


def test_two_erroring_releases_roll_back_past_both():
    plan = plan_for(*SCENES["two-erroring-releases"])
    assert [(a.kind, a.params_as(Rollback).to_revision) for a in plan.actions] == [("rollback", 2)], plan.summary
    assert any("failed too (30% errors), and the failure began with it" in line for line in plan.support)
    assert any("passed over: revision 3 (v1.6.0-errors) failed 30%" in line for line in plan.support), plan.support


@pytest.mark.parametrize("name", sorted(CATALOG))
def test_each_catalog_fault_is_judged_right_from_a_manual_run_without_an_alert(name):
    """Started from the UI or the CLI, a run has no alert saying when the failure began: no
    fault is judged worse for it (a weak rollback may stand in for a strong one)."""
    scenario, findings, _ = SCENES[name]
    plan = plan_for(scenario, findings, None)
    assert grade(CATALOG[name], {a.kind for a in plan.actions}, plan.abstained) == "right", plan.summary


def test_without_an_alert_two_erroring_releases_get_a_weak_rollback_to_the_revision_that_served():
    """Nothing says when the errors began, and the revision before failed too: the errors are
    not tied to the newest release alone. A rollback to v1.5.0, which served cleanly until
    seconds ago, is as safe as a restart: offered weakly, with the evidence against it."""
    scenario, findings, _ = SCENES["two-erroring-releases"]
    plan = plan_for(scenario, findings, None)
    assert plan.confidence == Confidence.WEAK
    assert [(a.kind, a.params_as(Rollback).to_revision) for a in plan.actions] == [("rollback", 2)]
    assert any("the errors are not new with v1.6.1-errors" in line for line in plan.against), plan.against
    assert any("served cleanly by its own record" in line for line in plan.support), plan.support
    # the same, but the clean revision was replaced two hours ago: the errors may be older than both
    stale = {**findings, DEPLOYS: deploys((3, "v1.6.0-errors", 2 * 3600), (4, "v1.6.1-errors", 6))}
    plan = plan_for(scenario, stale, None)
    assert plan.abstained and "is a suspect, but the evidence does not tie the errors to it" in plan.summary


def test_without_an_alert_oom_kills_after_a_healthy_release_are_not_rolled_back():
    scenario, findings, _ = SCENES["release-then-oom-kills"]
    plan = plan_for(scenario, findings, None)
    assert plan.abstained and not plan.actions, plan.summary
    assert any("no alert says when the failure began" in line for line in plan.against), plan.against


def test_a_fault_no_check_sees_between_two_healthy_releases_rolls_back_neither():
    """A healthy release, 15 s later a feature flag failing 40 %, and a second healthy release
    20 s into the outage: the first release served cleanly before the failure began (its own
    traffic says so), so neither release is tied to it."""
    findings = _errors(0.4, "v1.6.1", 4, (4, "v1.6.1", 15), onset=35, extra=((3, "v1.6.0", 50),),
                       versions={"v1.6.1": (100, 40, 750, 300), "v1.6.0": (0, 0, 1750, 400), "v1.5.0": CLEAN_OLD})
    plan = plan_for(*findings)
    assert not {a.kind for a in plan.actions} & {"rollback"}, plan.summary
    assert plan.abstained


def test_pods_lost_with_their_node_are_restarted_onto_a_ready_one_never_rolled_back():
    """Every pod down because its node stopped reporting, right after a release: the release is
    not the cause; another node takes pods, so a restart replaces them there now."""
    findings = {HEALTH: health(endpoints_fail=True), ROLLOUT: on_nodes("v1.6.0", 3, {"node-1", "node-2"}),
                DEPLOYS: deploys(GOOD), NODES: nodes({"node-1", "node-2"}, schedulable=True)}
    plan = plan_for("service-down", findings, 5)
    assert [a.kind for a in plan.actions] == ["rollout_restart"] and plan.confidence == Confidence.STRONG, plan.summary
    assert any("NotReady" in s for s in plan.support)
    assert any("not the cause" in a for a in plan.against)


def test_nodes_that_explain_only_some_failing_pods_leave_the_other_rules_to_judge():
    findings = {HEALTH: health(endpoints_fail=True),
                ROLLOUT: rollout("v1.6.0-broken", 3, False, waiting="CrashLoopBackOff"),
                DEPLOYS: deploys((3, "v1.6.0-broken", 5)), NODES: nodes({"node-1"})}
    plan = plan_for("service-down", findings, 5)  # the pods crash on every node: the release is the cause
    assert [a.kind for a in plan.actions] == ["rollback"], plan.summary


def test_lost_pods_count_in_the_scale_up_and_no_ready_node_means_no_scale_up():
    _, findings, onset = SCENES["node-not-ready"]
    plan = plan_for("high-error-rate", findings, onset)
    scale = next(a for a in plan.actions if a.kind == "scale")
    assert scale.params_as(Scale).to == 4, \
        "2 ready replicas carry 50 rps x 1.2 at 40 each, and 2 of 3 replicas serve nothing"
    stuck = {**findings, NODES: nodes({"node-1"}, schedulable=False)}
    plan = plan_for("high-error-rate", stuck, onset)
    assert not [a for a in plan.actions if a.kind == "scale"], plan.summary
    assert any("no node of the cluster takes new pods" in a for a in plan.against)


def usage(cpu_m: float, memory_mi: float) -> Finding:
    return Finding(USAGE, memory_mi < 230, "usage", data={
        "pods": [{"pod": f"api-{n}", "cpu_m": cpu_m, "memory_mi": memory_mi} for n in range(3)],
        "cpu_request_m": 100.0, "memory_request_mi": 128.0, "memory_limit_mi": 256.0})


def test_the_memory_samples_are_named_with_an_oom_kill():
    _, findings, onset = SCENES["oom-kills"]
    plan = plan_for("service-down", {**findings, USAGE: usage(1.0, 250.0)}, onset)
    assert plan.abstained and "memory up to 250Mi of the 256Mi limit (98%)" in plan.summary, plan.summary


def test_cpu_far_above_its_request_supports_a_scale_up():
    _, findings, onset = SCENES["error-spike"]
    plan = plan_for("high-error-rate", {**findings, USAGE: usage(250.0, 96.0)}, onset)
    assert [a.kind for a in plan.actions] == ["scale"]
    assert any("2.5x their 100m request: saturated" in s for s in plan.support), plan.support
    calm = plan_for("high-error-rate", {**findings, USAGE: usage(60.0, 96.0)}, onset)
    assert not any("saturated" in s for s in calm.support)


def test_a_slow_p99_from_prometheus_is_slow_even_when_the_probes_were_quick():
    findings = {HEALTH: health(), ROLLOUT: rollout("v1.5.0", 2), DEPLOYS: deploys(),
                LATENCY: Finding(LATENCY, False, "p99", data={"p50_ms": 1750.0, "p99_ms": 2485.0, "slo_ms": 1000.0})}
    plan = plan_for("service-down", findings, 5)
    assert plan.abstained and "slow, not down" in plan.summary and "2485 ms" in plan.summary, plan.summary
    fast = {**findings, LATENCY: Finding(LATENCY, True, "p99", data={"p50_ms": 20.0, "p99_ms": 49.0, "slo_ms": 1000.0})}
    assert not plan_for("service-down", fast, 5).abstained


def test_a_release_failing_many_times_more_than_one_live_for_seconds_before_it_is_rolled_back():
    """v1.6.5 went out 15 s before v1.7.0-errors: its record is its own rollout's gap (50 of its 750
    requests failed while no pod was ready, 6.7 %), not a failure like the new one's 30 %."""
    versions = {"v1.7.0-errors": (100, 30, 300, 90), "v1.6.5": (0, 0, 750, 50), "v1.5.0": CLEAN_OLD}
    _, findings, onset = _errors(0.3, "v1.7.0-errors", 4, (4, "v1.7.0-errors", 6), versions=versions,
                                 extra=((3, "v1.6.5", 21),))
    plan = plan_for("high-error-rate", findings, onset)
    assert [a.kind for a in plan.actions] == ["rollback"], f"{plan.summary} | {plan.against}"
    assert plan.actions[0].params_as(Rollback).to_revision == 2, "v1.6.5 was live 15 s: no record of serving cleanly"
    assert any("the errors rose with it" in s for s in plan.support)
    versions["v1.6.5"] = (0, 0, 360000, 72000)  # live for 2 hours at 20 %: the errors are not new
    _, findings, onset = _errors(0.3, "v1.7.0-errors", 4, (4, "v1.7.0-errors", 6), versions=versions,
                                 extra=((3, "v1.6.5", 7200),))
    plan = plan_for("high-error-rate", findings, onset)
    assert plan.abstained and any("the errors are not new" in a for a in plan.against), plan.summary
