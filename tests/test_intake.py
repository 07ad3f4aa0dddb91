"""The alert intake: auth, limits, parsing, routing, Redis dedup, Prefect runs, Grafana
signatures, fuzzed payloads, and the real Alertmanager end to end."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from datetime import datetime, timezone

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from tests.conftest import FlowThread, free_port, start_daemon

pytestmark = pytest.mark.usefixtures("prefect_server")

TOKEN = "test-alert-token"
REDIS_URL = "redis://127.0.0.1:6379/14"
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


def test_one_run_per_firing_alert_whatever_is_resent(intake, deployments):
    first = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1"), _alert("b2")), headers=AUTH).json()
    assert len(first["started"]) == 2 and first["duplicates"] == 0
    for _ in range(3):
        again = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1"), _alert("b2")), headers=AUTH).json()
        assert again["started"] == [] and again["duplicates"] == 2
    runs = _runs(deployments["service-down"])
    assert len(runs) == 2
    params = sorted((r.parameters for r in runs), key=lambda p: p["alert"]["fingerprint"])
    assert params[0]["service"] == "api" and params[0]["environment"] == "sandbox"
    assert params[0]["alert"]["labels"]["alertname"] == "ServiceDown" and params[0]["alert"]["startsAt"]
    # the same alert firing again later (a new startsAt) is a new incident
    refire = intake.post("/alerts/alertmanager", json=_am_payload(_alert("b1", starts="2026-11-26T05:00:00Z")),
                         headers=AUTH).json()
    assert len(refire["started"]) == 1


def test_routing_picks_the_scenario_and_reports_unmatched_once(intake, deployments, world):
    body = _am_payload(_alert("c1", name="HighErrorRate"), _alert("c2", name="DiskFull"))
    outcome = intake.post("/alerts/alertmanager", json=body, headers=AUTH).json()
    assert [s["deployment"] for s in outcome["started"]] == ["high-error-rate/sandbox"] and outcome["unmatched"] == 1
    intake.post("/alerts/alertmanager", json=body, headers=AUTH)
    unrouted = [m for m in world.slack_messages if m["text"].startswith("⚠️ UNROUTED ALERT")]
    assert len(unrouted) == 1 and "DiskFull" in unrouted[0]["text"]


def test_bad_input_gets_a_reason_and_changes_nothing(intake, deployments):
    cases = [(b"{not json", 400), (json.dumps({"alerts": "x"}).encode(), 422),
             (json.dumps(_am_payload({"status": "firing", "labels": {"bad-name": "x"}, "startsAt": "x"})).encode(), 422),
             (json.dumps({**_am_payload(_alert("d1")), "version": "9"}).encode(), 422),
             (b"[" + b"1," * 700_000 + b"1]", 413)]
    for body, status in cases:
        response = intake.post("/alerts/alertmanager", content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code == status, (body[:60], response.text)
        assert response.json()["error"]
    assert _runs(deployments["service-down"]) == []


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
        wrong = client.post("/alerts/grafana", content=body, headers={**headers, "X-Grafana-Alerting-Signature": "0" * 64})
        assert wrong.status_code == 401 and "does not match" in wrong.json()["error"]
        if use_timestamp:
            old = str(int(time.time()) - 3600)
            stale_sig = hmac.new(secret.encode(), old.encode() + b":" + body, hashlib.sha256).hexdigest()
            stale = client.post("/alerts/grafana", content=body, headers={
                **headers, "X-Grafana-Alerting-Signature": stale_sig, "X-Grafana-Alerting-Signature-Timestamp": old})
            assert stale.status_code == 401 and "old" in stale.json()["error"]
        ok = client.post("/alerts/grafana", content=body, headers=headers)
        assert ok.status_code == 200 and len(ok.json()["started"]) == 1


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12),
                                                                                             children, max_size=4),
                           max_leaves=20)
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
    server = uvicorn.Server(uvicorn.Config(create_app(_settings()), host="127.0.0.1", port=port, log_level="warning"))
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
    assert httpx.post(f"{am}/api/v2/alerts", json=alerts, timeout=5).status_code == 200


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_alertmanager_starts_exactly_the_expected_runs(alertmanager, deployments, world):
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    labels = {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}
    _post_alerts(alertmanager, [{"labels": labels, "annotations": {"summary": "api down"}, "startsAt": starts},
                                {"labels": {**labels, "alertname": "HighErrorRate"}, "startsAt": starts}])
    _wait_for(lambda: len(_runs(deployments["service-down"])) == 1 and len(_runs(deployments["high-error-rate"])) == 1)
    time.sleep(4)  # several repeat intervals of resends
    assert len(_runs(deployments["service-down"])) == 1 and len(_runs(deployments["high-error-rate"])) == 1
    run = _runs(deployments["service-down"])[0]
    assert run.parameters["alert"]["labels"] == labels and run.parameters["service"] == "api"


def test_a_resolved_alert_withdraws_the_pending_approval_and_posts_an_update(alertmanager, deployments, world, store):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow

    from flows.service_down import service_down
    from tests.conftest import break_api

    break_api(world)
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    alert = {"labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}, "startsAt": starts}
    _post_alerts(alertmanager, [alert])
    run = _wait_for(lambda: (_runs(deployments["service-down"]) or [None])[0])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run.id)
    # execute that very run here, as the worker would, until it waits for approval: a deployed
    # run suspends (its process ends) and is scheduled again once answered
    worker = FlowThread(lambda: run_flow(service_down, flow_run=flow_run, parameters=flow_run.parameters))
    worker.wait_paused()
    with pytest.raises(Pause):
        worker.join(30)
    ends = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    _post_alerts(alertmanager, [{**alert, "endsAt": ends}])
    with get_client(sync_client=True) as client:
        _wait_for(lambda: client.read_flow_run(run.id).state.is_scheduled())
        flow_run = client.read_flow_run(run.id)
    result = FlowThread(lambda: run_flow(service_down, flow_run=flow_run, parameters=flow_run.parameters)).join(60)
    assert result["resumed"] is True
    assert result["outcome"] == "withdrawn" and result["decision"]["reason"] == "alert resolved"
    assert not any("ESCALATION" in m["text"] for m in world.slack_messages), "a cleared alert pages nobody"
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith("-broken"), "a resolved alert never starts a remediation"
    updates = _wait_for(lambda: [m for m in world.slack_messages if m["text"].startswith("📊 INCIDENT UPDATE")
                                 and "alert resolved at its source" in m["text"]])
    assert "withdrawn" in updates[0]["text"]
    assert "alert_resolved" in [e.kind for e in store.timeline(result["incident_id"])]
