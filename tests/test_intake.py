"""The alert intake: auth, limits, parsing, routing, Redis dedup, Prefect runs, Grafana
signatures, fuzzed payloads, and the real Alertmanager end to end."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from integrations import http
from tests.conftest import LANE_REDIS_DBS, FlowThread, free_port, start_daemon

pytestmark = pytest.mark.usefixtures("prefect_server")

TOKEN = "test-alert-token"
REDIS_URL = f"redis://127.0.0.1:6379/{LANE_REDIS_DBS[1]}"
GRACE = 2.0  # intake.resolve_grace_seconds for the live intake (300 by default)
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def deployments(prefect_server):
    """The four scenario deployments registered on the test server (no worker runs them)."""
    from prefect.client.orchestration import get_client

    from flows.database_issues import database_issues
    from flows.high_error_rate import high_error_rate
    from flows.security_incident import security_incident
    from flows.service_down import service_down

    ids = {}
    with get_client(sync_client=True) as client:
        for fn, path in ((service_down, "flows/service_down.py:service_down"),
                         (high_error_rate, "flows/high_error_rate.py:high_error_rate"),
                         (database_issues, "flows/database_issues.py:database_issues"),
                         (security_incident, "flows/security_incident.py:security_incident")):
            flow_id = client.create_flow(fn)
            ids[fn.name] = client.create_deployment(flow_id=flow_id, name="sandbox", entrypoint=path)
    return ids


def _settings(**overrides):
    from prefect.settings import PREFECT_API_URL

    from deployments.intake import IntakeSettings
    from incidents.config import load_config

    base = dict(token=TOKEN, routes=list(load_config().routing), redis_url=REDIS_URL,
                prefect_api_url=PREFECT_API_URL.value(), notify_unmatched=True)
    return IntakeSettings(**{**base, **overrides})


def _clean(deployments) -> None:
    """No runs left from an earlier test, an empty dedup database."""
    from prefect.client.orchestration import get_client

    redis.Redis.from_url(REDIS_URL).flushdb()
    with get_client(sync_client=True) as client:
        for dep_id in deployments.values():
            for run in _runs(dep_id):
                client.delete_flow_run(run.id)


@pytest.fixture
def intake(world, deployments):
    from deployments.intake import create_app

    _clean(deployments)
    with TestClient(create_app(_settings())) as client:
        yield client


def _runs(deployment_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def _am_payload(*alerts: dict, status: str = "firing") -> dict:
    return {"version": "4", "groupKey": "{}:{alertname=\"ServiceDown\"}", "status": status, "receiver": "intake",
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://am",
            "truncatedAlerts": 0, "alerts": list(alerts)}


def _alert(fp: str, name: str = "ServiceDown", status: str = "firing", starts: str = "2026-11-26T03:00:00Z", **labels):
    return {"status": status, "labels": {"alertname": name, "service": "api", "environment": "sandbox", **labels},
            "annotations": {"summary": "api is down"}, "startsAt": starts, "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph", "fingerprint": fp}


def test_auth_is_required_and_nothing_happens_without_it(intake, deployments):
    body = _am_payload(_alert("a1"))
    assert intake.post("/alerts/alertmanager", json=body).status_code == 401
    assert intake.post("/alerts/alertmanager", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert _runs(deployments["service-down"]) == []
    assert intake.get("/healthz").json()["ok"]


def test_one_run_per_outage_whatever_is_resent(intake, deployments, store):
    first = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1"), _alert("b2")), headers=AUTH).json()
    assert len(first["started"]) == 1 and len(first["joined"]) == 1 and first["duplicates"] == 0
    incident_id = first["started"][0]["incident_id"]
    assert first["joined"][0]["incident_id"] == incident_id and first["joined"][0]["seen"] == "new"
    for _ in range(3):
        again = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1"), _alert("b2")), headers=AUTH).json()
        assert again["started"] == [] and again["joined"] == [] and again["duplicates"] == 2
    runs = _runs(deployments["service-down"])
    assert len(runs) == 1
    params = runs[0].parameters
    assert params["service"] == "api" and params["environment"] == "sandbox" and params["severity"] == "P0"
    assert params["alert"]["labels"]["alertname"] == "ServiceDown" and params["alert"]["startsAt"]
    assert params["alert"]["correlation_key"] == "sandbox/api"
    assert store.get(incident_id).flow_run_id == str(runs[0].id)
    # the same alert firing again later (a new startsAt) while the incident is open: a flap, it joins
    refire = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1", starts="2026-11-26T05:00:00Z")),
                         headers=AUTH).json()
    assert refire["started"] == [] and refire["joined"][0]["seen"] == "refired"
    assert "flap" in [e.kind for e in store.timeline(incident_id)]
    # once the incident is resolved, the next firing is a new incident (a run never joins a resolved one)
    store.close(incident_id, "test", "test")
    later = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1", starts="2026-11-26T07:00:00Z")),
                        headers=AUTH).json()
    assert len(later["started"]) == 1 and later["started"][0]["incident_id"] != incident_id
    assert len(_runs(deployments["service-down"])) == 2


def test_replicas_and_a_second_symptom_join_one_incident(intake, deployments, store, world):
    a = _alert("x", replica="a", starts="2026-11-26T03:00:00Z")
    b = _alert("y", replica="b", starts="2026-11-26T03:00:00Z")  # the HA pair: same alert but for the replica
    first = intake.post("/alerts/alertmanager", json=_am_payload(a, b), headers=AUTH).json()
    assert len(first["started"]) == 1 and first["joined"] == [] and first["duplicates"] == 1, first
    incident_id = first["started"][0]["incident_id"]
    late_b = _alert("y", replica="b", starts="2026-11-26T03:00:01Z")  # the other replica evaluated a second later
    joined = intake.post("/alerts/alertmanager", json=_am_payload(late_b), headers=AUTH).json()
    assert joined["joined"][0]["incident_id"] == incident_id
    symptom = intake.post("/alerts/alertmanager", json=_am_payload(_alert("e1", name="HighErrorRate", severity="P1")),
                          headers=AUTH).json()
    assert symptom["started"] == [] and symptom["joined"][0]["incident_id"] == incident_id
    assert symptom["joined"][0]["seen"] == "new" and symptom["joined"][0]["severity"] == "P0"  # P1 does not lower it
    # the second symptom's runbook runs once, to add its findings (tests/test_correlation.py)
    assert len(_runs(deployments["high-error-rate"])) == 1 and len(_runs(deployments["service-down"])) == 1
    again = intake.post("/alerts/alertmanager", json=_am_payload(_alert("e2", name="HighErrorRate", instance="b")),
                        headers=AUTH).json()
    assert again["joined"] and "flow_run_id" not in again["joined"][0]
    assert len(_runs(deployments["high-error-rate"])) == 1
    alerts = {a.alertname: a for a in store.incident_alerts(incident_id)}
    assert set(alerts) >= {"ServiceDown", "HighErrorRate"}
    assert [e.kind for e in store.timeline(incident_id)].count("joined") >= 2
    assert store.open_for_key("sandbox/api").id == incident_id


def test_a_more_severe_alert_raises_the_incident_and_pages_the_difference(intake, deployments, store, world):
    from incidents.models import Severity
    from incidents.store import IncidentStore
    from tasks.context import RunContext

    p2 = intake.post("/alerts/alertmanager", json=_am_payload(_alert("s1", name="HighErrorRate", severity="P2")),
                     headers=AUTH).json()
    incident_id = p2["started"][0]["incident_id"]
    assert store.get(incident_id).severity == Severity.P2
    IncidentStore().claim_announcement(incident_id)  # as the run does when it posts the Initial Alert
    from integrations.github import GitHubClient
    from sandbox.world import GITHUB_TOKEN

    with GitHubClient(world.url + "/github", GITHUB_TOKEN) as github:  # as the run opens it, and a person labels it
        issue = github.create_issue("acme/incidents", "[P2] api: error rate", "## 🚨 Incident Report",
                                    ["incident", "P2", "customer-facing"])
    IncidentStore().attach_issue(incident_id, "acme/incidents", issue.number, issue.html_url)
    p0 = intake.post("/alerts/alertmanager", json=_am_payload(_alert("s2", name="ServiceDown", severity="P0")),
                     headers=AUTH).json()
    assert p0["joined"][0]["severity"] == "P0" and store.get(incident_id).severity == Severity.P0
    ctx = RunContext.load("sandbox", "api")
    from tasks.correlation import added_contacts

    added = added_contacts(ctx, Severity.P2, Severity.P0)
    assert added, "the sandbox's P0 pages someone P2 does not"
    raised = [m["text"] for m in world.slack_messages if m["text"].startswith("📊 INCIDENT UPDATE")
              and "severity raised from P2 to P0" in m["text"]]
    assert len(raised) == 1 and all(ctx.config.roles.mention(c) in raised[0] for c in added), raised
    assert not any(m["text"].startswith("🚨") for m in world.slack_messages), "no second Initial Alert"
    # the issue says the new severity: its title, its labels (a person's label stays), its body
    stored = world.github.repo("acme/incidents").issues[issue.number - 1]
    assert stored["title"].startswith("[P0] api: "), stored["title"]
    assert [label["name"] for label in stored["labels"]] == ["incident", "P0", "priority:high", "area:infra",
                                                             "customer-facing"], stored["labels"]
    assert "**Severity:** P0" in stored["body"] and "severity raised from P2 to P0" in stored["body"], stored["body"]
    lower = intake.post("/alerts/alertmanager", json=_am_payload(_alert("s3", name="DatabaseIssues", severity="P3")),
                        headers=AUTH).json()
    assert lower["joined"][0]["severity"] == "P0"
    assert len([m for m in world.slack_messages if "severity raised" in m["text"]]) == 1


def test_unknown_service_is_refused_with_the_reason_and_reported(intake, deployments, world):
    body = _am_payload(_alert("u1", service="payments"), _alert("u2"))
    response = intake.post("/alerts/alertmanager", json=body, headers=AUTH)
    assert response.status_code == 422, response.text
    outcome = response.json()
    assert "unknown service 'payments'" in outcome["error"] and "add it to the config" in outcome["error"]
    assert len(outcome["started"]) == 1, "the known service's alert in the same delivery is still handled"
    notices = [m["text"] for m in world.slack_messages if m["text"].startswith("⚠️ ALERT NOT STARTED")]
    assert len(notices) == 1 and "payments" in notices[0]
    env = intake.post("/alerts/alertmanager", json=_am_payload(_alert("u3", environment="mars")), headers=AUTH)
    assert env.status_code == 422 and "unknown environment 'mars'" in env.json()["error"]
    assert len(_runs(deployments["service-down"])) == 1


def test_routing_picks_the_scenario_and_reports_unmatched_once(intake, deployments, world):
    body = _am_payload(_alert("c1", name="HighErrorRate"), _alert("c2", name="DiskFull"))
    outcome = intake.post("/alerts/alertmanager", json=body, headers=AUTH).json()
    assert [s["deployment"] for s in outcome["started"]] == ["high-error-rate/sandbox"] and outcome["unmatched"] == 1
    intake.post("/alerts/alertmanager", json=body, headers=AUTH)
    unrouted = [m for m in world.slack_messages if m["text"].startswith("⚠️ UNROUTED ALERT")]
    assert len(unrouted) == 1 and "DiskFull" in unrouted[0]["text"]


def test_bad_input_gets_a_reason_and_changes_nothing(intake, deployments):
    cases = [
        (b"{not json", 400),
        (json.dumps({"alerts": "x"}).encode(), 422),
        (json.dumps(_am_payload({"status": "firing", "labels": {"bad-name": "x"}, "startsAt": "x"})).encode(), 422),
        (json.dumps({**_am_payload(_alert("d1")), "version": "9"}).encode(), 422),
        (b"[" + b"1," * 700_000 + b"1]", 413),
    ]
    for body, status in cases:
        response = intake.post(
            "/alerts/alertmanager", content=body, headers={**AUTH, "Content-Type": "application/json"}
        )
        assert response.status_code == status, (body[:60], response.text)
        assert response.json()["error"]
    assert _runs(deployments["service-down"]) == []


def _metrics(intake) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    answer = intake.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(answer.text) for s in family.samples}


def _alerts(metrics, source: str, outcome: str) -> float:
    return metrics.get(("runbooks_alerts_received_total", (("outcome", outcome), ("source", source))), 0.0)


def test_metrics_count_each_alert_by_source_and_outcome(intake, deployments):
    before = _metrics(intake)
    assert intake.post("/alerts/alertmanager", json=_am_payload(_alert("m1")), headers=AUTH).json()["started"]
    intake.post("/alerts/alertmanager", json=_am_payload(_alert("m1")), headers=AUTH)  # a resend
    assert intake.post("/alerts/alertmanager", json=_am_payload(_alert("m2", environment="mars")),
                       headers=AUTH).status_code == 422
    assert intake.post("/alerts/alertmanager", json=_am_payload(_alert("m3")), headers={}).status_code == 401
    assert intake.post("/alerts", content=b"{not json", headers=AUTH).status_code == 400
    after = _metrics(intake)
    for outcome, grew in (("started", 1), ("duplicate", 1), ("unknown", 1), ("refused", 1), ("joined", 0)):
        assert _alerts(after, "alertmanager", outcome) - _alerts(before, "alertmanager", outcome) == grew, outcome
    assert _alerts(after, "generic", "refused") - _alerts(before, "generic", "refused") == 1
    route = (("route", "/alerts/alertmanager"),)
    assert after[("runbooks_intake_request_seconds_count", route)] - \
        before.get(("runbooks_intake_request_seconds_count", route), 0) == 4
    assert all(name.startswith(("runbooks_", "process_", "python_")) for name, _ in after), \
        sorted({n for n, _ in after if not n.startswith(("runbooks_", "process_"))})


def test_metrics_show_the_approvals_waiting_and_the_overdue_ones(intake, store, world):
    from datetime import datetime, timedelta, timezone

    from incidents.models import Severity

    now = datetime.now(timezone.utc)
    opened = [store.open_incident(dedup_key=f"metrics-{n}-{now.timestamp()}", scenario="service-down", service="api",
                                  environment="sandbox", severity=Severity.P1, title=f"metrics {n}",
                                  detected_by="alert", flow_run_id=None, alert=None) for n in range(2)]
    from incidents.plans import Plan

    store.request_approval(opened[0].id, Plan(opened[0].id, "api", "sandbox", ()), "run-metrics-1",
                           now - timedelta(seconds=5))
    store.request_approval(opened[1].id, Plan(opened[1].id, "api", "sandbox", ()), "run-metrics-2",
                           now + timedelta(hours=1))
    time.sleep(1.1)
    metrics = _metrics(intake)
    env = (("environment", "sandbox"),)
    assert metrics[("runbooks_approvals_waiting", env)] == 2
    assert metrics[("runbooks_approvals_overdue", env)] == 1
    assert metrics[("runbooks_approval_oldest_age_seconds", env)] >= 1.0


def test_generic_format(intake, deployments):
    alert = {"status": "firing", "labels": {"alertname": "DatabaseIssues", "service": "api", "environment": "sandbox"},
             "startsAt": "2026-11-26T03:00:00Z"}
    outcome = intake.post("/alerts", json=alert, headers=AUTH).json()
    assert outcome["started"][0]["deployment"] == "database-issues/sandbox"
    missing_start = intake.post("/alerts", json={**alert, "startsAt": None}, headers=AUTH)
    assert missing_start.status_code == 422 and "startsAt is required" in missing_start.json()["error"]


@pytest.mark.parametrize("use_timestamp", [False, True])
def test_grafana_signature(world, deployments, use_timestamp):
    from deployments.intake import create_app

    _clean(deployments)
    secret = "grafana-shared-secret"
    body = json.dumps({"receiver": "runbooks", "status": "firing", "orgId": 1, "version": "1",
                       "alerts": [_alert(f"g-{use_timestamp}", name="ServiceDown")]}).encode()
    stamp = str(int(time.time()))
    signed = (stamp.encode() + b":" + body) if use_timestamp else body
    good = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    headers = {**AUTH, "Content-Type": "application/json", "X-Grafana-Alerting-Signature": good}
    if use_timestamp:
        headers["X-Grafana-Alerting-Signature-Timestamp"] = stamp
    with TestClient(create_app(_settings(grafana_secret=secret, grafana_use_timestamp=use_timestamp))) as client:
        wrong = client.post(
            "/alerts/grafana", content=body, headers={**headers, "X-Grafana-Alerting-Signature": "0" * 64}
        )
        assert wrong.status_code == 401 and "does not match" in wrong.json()["error"]
        if use_timestamp:
            old = str(int(time.time()) - 3600)
            stale_sig = hmac.new(secret.encode(), old.encode() + b":" + body, hashlib.sha256).hexdigest()
            stale = client.post("/alerts/grafana", content=body, headers={
                **headers, "X-Grafana-Alerting-Signature": stale_sig, "X-Grafana-Alerting-Signature-Timestamp": old})
            assert stale.status_code == 401 and "old" in stale.json()["error"]
        for bad in ("é" * 64, "zz", "", "\x00" * 64):  # any malformed header: refused, never a 500
            refused = client.post("/alerts/grafana", content=body,
                                  headers={**headers, "X-Grafana-Alerting-Signature": bad.encode("utf-8")})
            assert refused.status_code == 401, (bad, refused.text)
        ok = client.post("/alerts/grafana", content=body, headers=headers)
        assert ok.status_code == 200 and len(ok.json()["started"]) == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
alertish = st.fixed_dictionaries({"alerts": st.lists(st.fixed_dictionaries({
    "status": st.sampled_from(["firing", "resolved", "bogus", ""]),
    "labels": st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3) | json_values,
    "startsAt": st.text(max_size=25) | st.none()}), max_size=3)})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(json_values, alertish), endpoint=st.sampled_from(["/alerts/alertmanager", "/alerts/grafana",
                                                                         "/alerts"]))
def test_malformed_payloads_never_5xx_and_never_start_a_run(intake, deployments, payload, endpoint):
    response = intake.post(endpoint, content=json.dumps(payload), headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        assert response.json()["started"] == [] or all(
            isinstance(a, dict) and a.get("labels", {}).get("alertname") in ("ServiceDown", "HighErrorRate",
                                                                              "DatabaseIssues", "SecurityIncident")
            for a in payload.get("alerts", []))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_random_bytes_never_5xx(intake, raw):
    response = intake.post("/alerts/alertmanager", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code in (200, 400, 422), response.text


# -- the real Alertmanager ------------------------------------------------------------------------

@pytest.fixture
def live_intake(world, deployments):
    """The intake on a real port, as Alertmanager reaches it."""
    import uvicorn

    from deployments.intake import create_app

    _clean(deployments)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(_settings(resolve_grace_seconds=GRACE)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def alertmanager(live_intake, tmp_path):
    config = tmp_path / "alertmanager.yml"
    config.write_text(f"""
route:
  receiver: intake
  group_by: [alertname, service]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1s
receivers:
  - name: intake
    webhook_configs:
      - url: {live_intake}/alerts/alertmanager
        send_resolved: true
        http_config:
          authorization: {{type: Bearer, credentials: {TOKEN}}}
""")
    process, url = start_daemon("prometheus-alertmanager", [f"--config.file={config}",
                                f"--storage.path={tmp_path / 'data'}", "--cluster.listen-address="],
                                "prometheus-alertmanager")
    yield url
    process.terminate()
    process.wait(10)


def _post_alerts(am: str, alerts: list[dict]) -> None:
    assert http.post(f"{am}/api/v2/alerts", json=alerts, timeout=5).status_code == 200


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_alertmanager_one_outage_one_incident(alertmanager, deployments, world, store):
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    labels = {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}
    _post_alerts(alertmanager, [{"labels": labels, "annotations": {"summary": "api down"}, "startsAt": starts},
                                {"labels": {**labels, "alertname": "HighErrorRate"}, "startsAt": starts}])
    both = lambda: _runs(deployments["service-down"]) + _runs(deployments["high-error-rate"])  # noqa: E731
    _wait_for(lambda: len(both()) == 2)
    time.sleep(4)  # several repeat intervals of resends
    runs = both()
    assert len(runs) == 2, "one run per symptom, whatever Alertmanager resends"
    assert len({r.parameters["alert"]["correlation_key"] for r in runs}) == 1
    opened = [i for i in store.list(limit=10, open_only=True) if i.dedup_key == "sandbox/api"]
    assert len(opened) == 1, "one incident"
    run = [r for r in runs if r.parameters["alert"]["labels"]["alertname"] == "ServiceDown"][0]
    assert run.parameters["alert"]["labels"] == labels and run.parameters["service"] == "api"


def _suspend_at_approval(deployments, alertmanager, alert):
    """Alertmanager sends the alert; the run it started is executed here, as the worker would,
    until it waits for approval (a deployed run suspends: its process ends)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow

    from flows.service_down import service_down

    _post_alerts(alertmanager, [alert])
    run = _wait_for(lambda: (_runs(deployments["service-down"]) or [None])[0])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run.id)
    worker = FlowThread(lambda: run_flow(service_down, flow_run=flow_run, parameters=flow_run.parameters))
    worker.wait_paused()
    with pytest.raises(Pause):
        worker.join(30)
    return run


def _continue(run_id):
    """Run a suspended run again, as a worker would once it is resumed. The resume comes after
    the answer is recorded (a signature, a withdrawal): the run is taken up once it is Scheduled
    again, not as soon as the store shows the answer."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.service_down import service_down

    _wait_for(lambda: _run_state(run_id).is_scheduled(), timeout=30)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    return FlowThread(lambda: run_flow(service_down, flow_run=flow_run, parameters=flow_run.parameters)).join(60)


def _run_state(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id).state


def test_a_flap_inside_the_grace_continues_the_incident(alertmanager, deployments, world, store):
    from tests.conftest import break_api

    break_api(world)
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    alert = {"labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}, "startsAt": starts}
    run = _suspend_at_approval(deployments, alertmanager, alert)
    incident = store.incident_for_run(str(run.id))
    ends = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    _post_alerts(alertmanager, [{**alert, "endsAt": ends}])
    _wait_for(lambda: "alert_resolved" in [e.kind for e in store.timeline(incident.id)])
    refire = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # fires again inside the grace
    _post_alerts(alertmanager, [{**alert, "startsAt": refire}])
    _wait_for(lambda: "flap" in [e.kind for e in store.timeline(incident.id)])
    time.sleep(GRACE + 2)
    assert _run_state(run.id).is_paused(), "a flap inside the grace withdraws nothing"
    assert [a.decision for a in store.approvals(incident.id)] == [None]
    assert len(_runs(deployments["service-down"])) == 1
    texts = [m["text"] for m in world.slack_messages]
    assert sum(t.startswith("🚨 INCIDENT ALERT") for t in texts) == 1, "no second Initial Alert, no second page"
    assert sum(t.startswith("⏸️ APPROVAL NEEDED") for t in texts) == 1
    assert any("fired again after it had resolved" in t for t in texts), "the flap is told in the thread"
    with_issue = [i for i in store.list(limit=10) if i.github_issue and i.opened_at >= incident.opened_at]
    assert len(with_issue) == 1


def test_a_resolve_that_stays_resolved_withdraws_and_resolves(alertmanager, deployments, world, store):
    from tests.conftest import break_api

    break_api(world)
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    alert = {"labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}, "startsAt": starts}
    run = _suspend_at_approval(deployments, alertmanager, alert)
    resolved_at = time.monotonic()
    ends = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    _post_alerts(alertmanager, [{**alert, "endsAt": ends}])
    _wait_for(lambda: _run_state(run.id).is_scheduled(), timeout=GRACE + 20)
    assert time.monotonic() - resolved_at >= GRACE, "not withdrawn before the grace ran out"
    result = _continue(run.id)
    assert result["resumed"] is True and result["outcome"] == "withdrawn", result
    incident = store.get(result["incident_id"])
    assert incident.resolved_at is not None and "Withdrawn" in incident.root_cause
    assert incident.acknowledged_at is None, "a resolved alert is not an acknowledgement"
    assert store.approvals(incident.id)[0].decision == "withdrawn"
    assert not any("ESCALATION" in m["text"] for m in world.slack_messages), "a cleared alert pages nobody"
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith("-broken"), "a resolved alert never starts a remediation"
    assert any(m["text"].startswith("✅") or "RESOLVED" in m["text"] for m in world.slack_messages)
    assert {"alert_resolved", "approval_withdrawn", "resolved"} <= {e.kind for e in store.timeline(incident.id)}


def test_an_intake_killed_between_claim_and_run_loses_nothing(world, deployments, store):
    """The intake dies after claiming an alert (and opening its incident) but before the run
    exists; the sender's next delivery starts exactly one run."""
    import signal
    import socket
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    _clean(deployments)
    black_hole = socket.socket()  # a Prefect API that accepts the connection and never answers
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)

    def intake(api: str) -> tuple[subprocess.Popen, str]:
        port = free_port()
        env = {**os.environ, "RUNBOOKS_ALERT_TOKEN": TOKEN, "RUNBOOKS_REDIS_URL": REDIS_URL, "PREFECT_API_URL": api}
        process = subprocess.Popen([sys.executable, "-m", "deployments.intake", "--port", str(port)], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: _healthy(url), timeout=30)
        return process, url

    body = _am_payload(_alert("k1", starts=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")))
    hanging, url = intake(f"http://127.0.0.1:{black_hole.getsockname()[1]}/api")
    try:
        with pytest.raises(httpx.ReadTimeout):
            http.post(f"{url}/alerts/alertmanager", json=body, headers=AUTH, timeout=2)
        assert redis.Redis.from_url(REDIS_URL).get("runbooks:alert:k1:" + body["alerts"][0]["startsAt"]) == b"starting"
    finally:
        hanging.send_signal(signal.SIGKILL)
        hanging.wait(10)
        black_hole.close()
    assert _runs(deployments["service-down"]) == [], "the run was never created"
    process, url = intake(PREFECT_API_URL.value())
    try:
        retry = http.post(f"{url}/alerts/alertmanager", json=body, headers=AUTH, timeout=30)
        assert retry.status_code == 200, retry.text
        runs = _runs(deployments["service-down"])
        assert len(runs) == 1, "the retry started the run"
        again = http.post(f"{url}/alerts/alertmanager", json=body, headers=AUTH, timeout=30).json()
        assert again["duplicates"] == 1 and len(_runs(deployments["service-down"])) == 1
        incident = store.open_for_key("sandbox/api")
        assert incident.flow_run_id == str(runs[0].id)
    finally:
        process.terminate()
        process.wait(10)


def _healthy(url: str) -> bool:
    try:
        return http.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_symptom_joining_an_incident_whose_run_is_not_started_yet_starts_both_rightly(intake, deployments, store):
    """Two deliveries at once: HighErrorRate has opened the incident but not yet started its run
    when ServiceDown joins. The opener's run is high-error-rate (under its own alert's key), the
    symptom's run is service-down (under its own)."""
    from incidents.alerts import AlertParameter
    from incidents.models import Severity

    opener = AlertParameter.model_validate(
        {**_alert("o1", name="HighErrorRate"), "source": "alertmanager", "correlation_key": "sandbox/api"})
    incident = store.open_incident(dedup_key="sandbox/api", scenario="high-error-rate", service="api",
                                   environment="sandbox", severity=Severity.P1, title="t", detected_by="alert",
                                   flow_run_id=None, alert=opener)
    joined = intake.post("/alerts/alertmanager", json=_am_payload(_alert("o2")), headers=AUTH).json()
    assert joined["joined"][0]["incident_id"] == incident.id
    [her] = _runs(deployments["high-error-rate"])
    [sd] = _runs(deployments["service-down"])
    assert her.parameters["alert"]["fingerprint"] == "o1" and sd.parameters["alert"]["fingerprint"] == "o2"
    assert store.get(incident.id).flow_run_id == str(her.id)


def test_an_alert_for_a_deployment_that_does_not_exist_is_retried_and_reported(intake, deployments, world, store):
    """Routing names service-down/sandbox-verified, which is not deployed: 503 (Alertmanager
    retries a 5xx, drops a 4xx), one Slack notice, nothing opened. Once it is deployed the
    retry starts the run; deleted and deployed again (a new id), the cached id is forgotten."""
    from prefect.client.orchestration import get_client

    from flows.service_down import service_down

    body = _am_payload(_alert("m1", environment="sandbox-verified"))
    for _ in range(2):
        response = intake.post("/alerts/alertmanager", json=body, headers=AUTH)
        assert response.status_code == 503, response.text
        assert "service-down/sandbox-verified" in response.json()["error"]
    notices = [m["text"] for m in world.slack_messages if m["text"].startswith("⚠️ ALERT NOT STARTED")]
    assert len(notices) == 1 and "does not exist" in notices[0] and "retries" in notices[0], notices
    assert not [i for i in store.list(open_only=True)
                if i.environment == "sandbox-verified"], "nothing was opened"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow(service_down)
        made = [client.create_deployment(flow_id=flow_id, name="sandbox-verified",
                                         entrypoint="flows/service_down.py:service_down")]
        try:
            started = intake.post("/alerts/alertmanager", json=body, headers=AUTH)
            assert started.status_code == 200 and len(started.json()["started"]) == 1, started.text
            client.delete_deployment(made[0])
            made.append(client.create_deployment(flow_id=flow_id, name="sandbox-verified",
                                                 entrypoint="flows/service_down.py:service_down"))
            assert made[1] != made[0]
            again = intake.post("/alerts/alertmanager", headers=AUTH,  # another service: a new incident, a new run
                                json=_am_payload(_alert("m2", service="frontend", environment="sandbox-verified")))
            assert again.status_code == 200 and len(again.json()["started"]) == 1, again.text
            assert again.json()["started"][0]["flow_run_id"] in {str(r.id) for r in _runs(made[1])}
        finally:
            for dep_id in made:
                for run in _runs(dep_id):
                    client.delete_flow_run(run.id)
            client.delete_deployment(made[-1])


def test_an_alert_still_firing_after_its_incident_closed_is_a_new_occurrence(intake, deployments, store):
    """Alertmanager resends a firing alert with its first startsAt. While the incident is open
    that is a duplicate; once it was closed (no impact found, resolved by hand) the fault is
    back or never left: a new incident and a new run, not 7 days of silence."""
    body = _am_payload(_alert("r1"))
    first = intake.post("/alerts/alertmanager", json=body, headers=AUTH).json()
    [started] = first["started"]
    resend = intake.post("/alerts/alertmanager", json=body, headers=AUTH).json()
    assert resend["duplicates"] == 1 and resend["started"] == []
    assert store.close(started["incident_id"], "nothing found", "no impact found")
    back = intake.post("/alerts/alertmanager", json=body, headers=AUTH).json()
    assert back["duplicates"] == 0 and len(back["started"]) == 1, back
    assert back["started"][0]["incident_id"] != started["incident_id"]
    assert back["started"][0]["flow_run_id"] != started["flow_run_id"], "a new run, not the old one by its key"
    assert len(_runs(deployments["service-down"])) == 2
    again = intake.post("/alerts/alertmanager", json=body, headers=AUTH).json()
    assert again["duplicates"] == 1, "the new incident is open: resends are duplicates again"
