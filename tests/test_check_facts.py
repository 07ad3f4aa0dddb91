"""Each check's facts as a model: the shapes the checks store read back unchanged, a key no
reader knows is refused where it is written, and a check that could not look leaves its facts
unknown (never healthy)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from incidents import check_facts as c
from incidents.evidence import service_facts
from incidents.findings import Finding, unavailable

START = "2026-11-29T00:01:02.345678+00:00"
SESSION = {"pid": 4242, "role": "sandbox_app", "superuser": False, "state": "idle in transaction",
           "backend_start": START, "seconds": 61.3, "query": "LOCK accounts"}
# one stored diagnosis per check, in the shapes the checks wrote before the models existed
STORED: dict[str, dict[str, Any]] = {
    c.HEALTH: {"results": [{"url": "http://api/health", "ok": False, "status": 503, "ms": 12}],
               "failing_checks": ["database"], "error_rate": 0.25},
    c.ROLLOUT: {"revision": 3, "image": "acme/api:v1.5.0", "rollout_done": False, "rollout_failed": True,
                "oom_killed": 0, "desired_replicas": 3, "autoscaler": {"name": "api", "min": 2, "max": 8},
                "paused": False, "pods": [{"name": "api-1", "ready": False, "restarts": 4,
                                           "waiting": "CrashLoopBackOff", "last_termination": "Error",
                                           "image": "acme/api:v1.5.0"}]},
    c.DEPLOYS: {"revisions": [{"revision": 3, "image": "acme/api:v1.5.0", "created": START, "age": "4m"},
                              {"revision": 2, "image": "acme/api:v1.4.1", "created": START, "age": "2h01m"}],
                "recent_revision": {"revision": 3, "image": "acme/api:v1.5.0", "created": START, "age": "4m"},
                "previous_revision": {"revision": 2, "image": "acme/api:v1.4.1", "created": START, "age": "2h01m"},
                "runs": [{"id": 17, "title": "deploy v1.5.0", "workflow": "deploy", "conclusion": "success",
                          "created_at": START}]},
    c.RUN_LOGS: {"run_id": 18},
    c.POD_LOGS: {"pod": "api-1", "error_lines": 3},
    c.NETWORK: {"dependencies": [{"name": "payments", "outcome": "refused", "detail": "refused", "status": None}]},
    c.CONFIG: {"objects": [{"kind": "configmap", "name": "api-config", "changed_at": START},
                           {"kind": "secret", "name": "api-credentials", "error": "Forbidden"}]},
    c.RATE: {"rate": 0.31, "requests": 400, "errors": 124.0, "rps": 40.0,
             "versions": {"v1.5.0": {"window_requests": 200, "window_errors": 120.0, "requests": 900,
                                     "errors": 300}}},
    c.PROMETHEUS: {"rate": 0.3},
    c.LATENCY: {"p50_ms": 1750.0, "p99_ms": 2485.0, "slo_ms": 1000.0},
    c.VOLUMES: {"volumes": [{"claim": "api-data", "used_ratio": 0.98}, {"claim": "api-logs"}], "full_at": 0.9},
    c.NODES: {"nodes": [{"name": "node-1", "ready": "Unknown", "pressures": [], "unschedulable": True, "pods": 2},
                        {"name": "node-2", "ready": "True", "pressures": ["MemoryPressure"], "pods": 1}],
              "unscheduled": 1, "schedulable": False},
    c.USAGE: {"pods": [{"pod": "api-1", "cpu_m": 250.0, "memory_mi": 96.0}], "cpu_request_m": 100.0,
              "memory_limit_mi": 256.0},
    c.COMMITS: {"count": 4},
    c.BREAKER: {"value": "off"},
    c.REACH: {},
    c.SESSIONS: {"root_blockers": [{**SESSION, "waiters": [4243]}], "idle_in_transaction": [SESSION],
                 "long_queries": [{**SESSION, "pid": 4250, "state": "active", "seconds": 320.0}], "blocked": [4243]},
    c.CONNECTIONS: {"scopes": [{"scope": "role sandbox_app", "used": 6, "limit": 6}],
                    "pressured": [{"scope": "role sandbox_app", "used": 6, "limit": 6}],
                    "idle_sessions": [{**SESSION, "state": "idle"}]},
    c.REPLICATION: {"role": "primary", "replicas": 0},
    c.CACHE: {"keys": 1200, "evicted": 3},
    c.EVIDENCE: {"secrets": [{"name": "api-credentials", "keys": ["token"], "resource_version": "7"}],
                 "log_level": "info", "captured_at": 1795000000.5,
                 "containment": {"labels": {"app": "api"}, "policies": [], "policy_blocks": [], "denylist": None}},
}


@pytest.mark.parametrize("check", sorted(STORED))
def test_a_stored_diagnosis_reads_back_unchanged(check):
    finding = Finding(check, False, "summary", ("a detail",), STORED[check], "log")
    assert type(finding.data) is c.FACTS[check]
    assert finding.as_dict()["data"] == STORED[check]
    assert Finding(**finding.as_dict()) == finding


def test_every_check_has_a_model_and_a_stored_shape():
    assert set(c.FACTS) == set(STORED)


def test_readers_get_typed_facts():
    rollout = Finding(c.ROLLOUT, False, "x", data=STORED[c.ROLLOUT]).facts(c.RolloutFacts)
    assert rollout.autoscaler == c.Autoscaler(name="api", min=2, max=8) and rollout.pods[0].restarts == 4
    cache = Finding(c.CACHE, False, "x", data=STORED[c.CACHE]).facts(c.CacheFacts)
    assert cache.key_count == 1200
    with pytest.raises(TypeError, match="reports CacheFacts, not RolloutFacts"):
        Finding(c.CACHE, False, "x", data=STORED[c.CACHE]).facts(c.RolloutFacts)


@pytest.mark.parametrize("check, data, wrong", [
    (c.ROLLOUT, {"revison": 3}, "revison"),
    (c.ROLLOUT, {"pods": [{"name": "api-1", "restarts": "many"}]}, "restarts"),
    (c.DEPLOYS, {"recent_revision": {"image": "acme/api:v1"}}, "revision"),
    (c.SESSIONS, {"root_blockers": [{"role": "app"}]}, "pid"),
    (c.REPLICATION, {"role": "standby"}, "role"),
    (c.BREAKER, {"value": "on", "previous": "off"}, "previous"),
])
def test_a_key_no_reader_knows_is_refused_where_it_is_written(check, data, wrong):
    with pytest.raises(ValidationError, match=wrong):
        Finding(check, True, "x", data=data)


def test_an_unknown_check_or_another_checks_facts_are_refused():
    with pytest.raises(c.UnknownCheck, match="'disk space'"):
        Finding("disk space", True, "fine")
    with pytest.raises(ValueError, match="BreakerFacts are not the facts of the 'cache' check"):
        Finding(c.CACHE, True, "x", data=c.BreakerFacts(value="on"))


def test_a_check_that_could_not_look_leaves_its_facts_unknown():
    now = datetime(2026, 11, 29, tzinfo=timezone.utc)
    facts = service_facts({c.ROLLOUT: unavailable(c.ROLLOUT, "timed out")}, now)
    assert not facts.pods_known and facts.desired_replicas is None and facts.current is None
    seen = service_facts({c.ROLLOUT: Finding(c.ROLLOUT, False, "x", data=STORED[c.ROLLOUT]),
                          c.DEPLOYS: Finding(c.DEPLOYS, False, "x", data=STORED[c.DEPLOYS])}, now)
    assert seen.pods_known and seen.current is not None and seen.current.went_live is not None
    assert seen.recent == seen.current and seen.previous is not None and seen.previous.revision == 2


@pytest.mark.parametrize("check", sorted(STORED))
def test_prefect_can_walk_a_finding_handed_to_a_task(check):
    from prefect.utilities.collections import visit_collection

    finding = Finding(check, False, "summary", data=STORED[check])
    assert visit_collection(finding, lambda x: x, return_data=True) == finding
