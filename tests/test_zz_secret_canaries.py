"""Secrets, everywhere: every secret the runbooks hold carries a canary (see conftest), and at
the end of the session (this module runs last) nothing the runbooks produced may contain one:
Prefect logs, flow and task run state messages (exceptions), artifacts, everything sent to
Slack and GitHub, every row of the incident store, the test process's log records, the log
files of the stacks the suite started, and the intake's Redis keys.

It also drives a few paths itself, including failing ones (Slack and GitHub answering 500,
the database unreachable), so that it means something when run alone."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psycopg
import pytest
import redis

from sandbox.http import Fault
from sandbox.pagerduty import routing_key
from sandbox.slack import BOT_TOKEN as SLACK_BOT_TOKEN
from sandbox.world import GITHUB_TOKEN, SLACK_PATH, SLACK_SECURITY_PATH
from tests.conftest import (
    APPROVER_CREDENTIALS,
    CAPTURED_LOGS,
    LANE_REDIS_DBS,
    PAGERDUTY_WEBHOOK_SECRET,
    PG_CANARY,
    REDIS_CANARY,
    SLACK_SIGNING_SECRET,
    FlowThread,
    break_api,
    read_all,
    with_password,
)
from tests.test_intake import REDIS_URL, TOKEN
from tests.test_rbac import ROLE, role_usage_problems

pytestmark = pytest.mark.usefixtures("prefect_server")
LEDGER_OUT = os.environ.get("RUNBOOKS_TEST_LEDGER")  # set by tests/lanes.py: where this lane's RBAC ledger goes
# every kind of output the scan must have seen something of (the test process's own log records
# are scanned too, but a lane may have logged none at WARNING)
SCANNED = {"prefect log", "flow run state", "task run state", "artifact", "store table incidents",
           "store table timeline_events", "sent to Slack/GitHub"}

CANARIES = {
    "github token": GITHUB_TOKEN,
    "slack webhook": SLACK_PATH.rsplit("/", 1)[1],
    "security webhook": SLACK_SECURITY_PATH.rsplit("/", 1)[1],
    "database password": PG_CANARY,
    "cache url": REDIS_CANARY,
    "alert token": TOKEN,
    "slack bot token": SLACK_BOT_TOKEN,
    "slack signing secret": SLACK_SIGNING_SECRET,
    "pagerduty webhook secret": PAGERDUTY_WEBHOOK_SECRET,
    "pagerduty routing key": routing_key("sre"),
    **{f"approver credential ({name})": value for name, value in APPROVER_CREDENTIALS.items()},
}


def _drive_paths(world, monkeypatch) -> None:
    from flows.database_issues import database_issues
    from flows.high_error_rate import high_error_rate
    from flows.incident_metrics import incident_metrics
    from flows.security_incident import security_incident
    from flows.service_down import service_down
    from tasks.watch import sweep

    break_api(world)
    world.cluster.app_log_lines[("sandbox", "api")] = [  # a service that logs its credentials
        f"ERROR cannot connect to postgresql://sandbox_app:{PG_CANARY}@db.internal:5432/app",
        f"DEBUG calling GitHub with Authorization: Bearer {GITHUB_TOKEN}"]
    run = FlowThread(service_down, service="api")
    run.resume(run.wait_paused().id, approve=True, approver="cara", reason="canary run")
    assert run.join()["outcome"] == "resolved"
    for flow in (high_error_rate, database_issues, security_incident):
        flow(service="api", dry_run=True)
    world.faults.set("slack", Fault(status=500))  # failures are where secrets usually leak: in error messages
    world.faults.set("github", Fault(status=500))
    service_down(service="api", dry_run=True)
    world.faults.clear()
    monkeypatch.setenv("RUNBOOKS_SECRET_API_DATABASE_URL",
                       with_password("postgresql://postgres@127.0.0.1:9/runbooks_test_app"))  # nothing listens
    database_issues(service="api", dry_run=True)
    sweep("sandbox")
    incident_metrics("sandbox")


def _prefect_texts() -> list[tuple[str, str]]:
    from prefect.client.orchestration import get_client

    found: list[tuple[str, str]] = []
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            logs = client.read_logs(limit=200, offset=offset)
            found += [("prefect log", log.message) for log in logs]
            if len(logs) < 200:
                break
            offset += 200
        for reader, what in ((client.read_flow_runs, "flow run"), (client.read_task_runs, "task run")):
            offset = 0
            while True:
                runs = reader(limit=200, offset=offset)
                found += [(f"{what} state", json.dumps(r.state.model_dump(mode="json")) if r.state else "")
                          for r in runs]
                found += [(f"{what} parameters", json.dumps(getattr(r, "parameters", {}), default=str)) for r in runs]
                if len(runs) < 200:
                    break
                offset += 200
        found += [("artifact", f"{a.key} {a.description} {a.data}") for a in read_all(client.read_artifacts)]
    return found


def _store_texts(database_url: str) -> list[tuple[str, str]]:
    found = []
    with psycopg.connect(database_url) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            for (row,) in conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t'):
                found.append((f"store table {table}", row))
    return found


def test_no_secret_ever_leaves_the_runbooks(world, monkeypatch, database_url, tmp_path_factory):
    held = " ".join(v for k, v in os.environ.items() if k.startswith("RUNBOOKS_SECRET_"))
    for name, canary in CANARIES.items():  # the runbooks really hold every canary
        assert name in ("alert token", "slack signing secret", "pagerduty webhook secret") or canary in held, name
    _drive_paths(world, monkeypatch)

    sources = _prefect_texts() + _store_texts(database_url)
    sources += [("sent to Slack/GitHub", body) for body in world.received_bodies]
    sources += [("test process log", text) for text in CAPTURED_LOGS.texts]
    for path in tmp_path_factory.getbasetemp().rglob("*.log"):
        sources.append((f"log file {path.name}", path.read_text(errors="replace")))
    for db in LANE_REDIS_DBS[:3]:
        client = redis.Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + f"/{db}")
        sources += [(f"redis db {db}", f"{k!r} {client.dump(k)!r}") for k in client.scan_iter(count=500)]

    # the scan sees real output of every kind (the paths driven above alone give ~200 items; a
    # lane of `make test` several hundred, the whole suite in one session thousands)
    assert len(sources) > 150, f"too little to check ({len(sources)} items): the suite did not run?"
    kinds = {where for where, _ in sources}
    assert SCANNED <= kinds, f"nothing of {sorted(SCANNED - kinds)} was scanned"
    assert any("INCIDENT RESOLVED" in text for _, text in sources)
    leaks = [(where, name, text[:200]) for where, text in sources for name, canary in CANARIES.items()
             if canary in text]
    assert not leaks, f"{len(leaks)} leaks, e.g. {leaks[:5]}"
    print(f"canaries: {len(CANARIES)} secrets checked in {len(sources)} outputs; no leak")


def _whole_suite(config: pytest.Config) -> bool:
    option = config.option
    return not option.keyword and not option.markexpr and (
        config.args == list(config.getini("testpaths")) or config.args in ([], [str(config.rootpath)]))


def test_the_runbooks_role_grants_only_what_the_suite_used(world, request):
    """Least privilege, measured: every (verb, group, resource) that runbooks-responder grants was
    used by the runbooks somewhere in this session, and the runbooks met no refusal they did not
    provoke on purpose. Only meaningful after the whole suite (this module runs last). In a lane
    of `make test` (tests/lanes.py) the lane's ledger is written out instead, and the lanes'
    ledgers are checked together once every lane has ended."""
    from sandbox.world import RUNBOOKS_USER

    ledger = world.authorizer.ledger
    allowed, refused = ledger.allowed.get(RUNBOOKS_USER, set()), ledger.refused.get(RUNBOOKS_USER, set())
    if LEDGER_OUT:
        Path(LEDGER_OUT).write_text(json.dumps({"allowed": sorted(allowed), "refused": sorted(refused)}))
        pytest.skip(f"this lane's ledger is written to {LEDGER_OUT}; tests/lanes.py checks every lane's together")
    if not _whole_suite(request.config):
        pytest.skip("compares the Role with what the whole suite used: run `make test`")
    problems = role_usage_problems(allowed, refused)
    assert not problems, "; ".join(problems)
    print(f"{ROLE}: {len(allowed)} grants used, none unused; refusals only where provoked")
