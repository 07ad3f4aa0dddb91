"""Bad input, everywhere it enters: flow parameters (as the UI sends them), config files,
alert payloads (more than 10,000 generated cases over the three intake endpoints), approval
input (the Resume form and the approval page). Each gets a clear error and changes nothing."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

from incidents.config import ConfigError, load_config
from integrations import http
from tests.conftest import BROKEN_IMAGE, ROOT, FlowThread, api_image, break_api
from tests.test_intake import AUTH, _clean, _runs, _settings, deployments  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("prefect_server")

ENDPOINTS = ("/alerts/alertmanager", "/alerts/grafana", "/alerts")
ROUTED = ("ServiceDown", "HighErrorRate", "DatabaseIssues", "SecurityIncident")


# -- alert payloads ------------------------------------------------------------------------------
def _valid(rng: random.Random, endpoint: str) -> dict:
    """A well-formed payload for the endpoint whose alerts match no routing rule."""
    alert = {"status": rng.choice(["firing", "resolved"]), "fingerprint": f"{rng.getrandbits(48):012x}",
             "labels": {"alertname": f"Unrouted{rng.randint(0, 9)}", "service": "api", "environment": "sandbox"},
             "annotations": {"summary": "x"}, "startsAt": "2026-11-26T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "http://prometheus/graph"}
    if endpoint == "/alerts":
        return {k: alert[k] for k in ("status", "labels", "annotations", "startsAt")}
    return {"version": "4" if endpoint.endswith("manager") else "1", "groupKey": "g", "status": alert["status"],
            "receiver": "intake", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://am", "truncatedAlerts": 0, "alerts": [alert]}


JUNK = [None, True, 0, -1, 10**30, 1.5e308, "", " ", "\x00", "ü" * 50, "<!channel>", "@here", "x" * 5000, [], {},
        [1, 2], {"a": {"b": {"c": []}}}, "2026-13-45T99:99:99Z", "0001-01-01T00:00:00Z", "not a date", "firing"]


def _mutate(rng: random.Random, value, depth: int = 0):
    """Replace, drop or corrupt one part of a JSON value; a routed alert name may only come
    back together with a corrupted start, so no generated case is a valid routed alert."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.8:
        key = rng.choice(list(value))
        out = dict(value)
        action = rng.random()
        if action < 0.25:
            out.pop(key)
        elif action < 0.35:
            out[rng.choice(["extra", "", "alerts", "labels", "status"])] = rng.choice(JUNK)
        else:
            out[key] = _mutate(rng, value[key], depth + 1)
        if key == "labels" and isinstance(out.get("labels"), dict) and rng.random() < 0.3:
            out["labels"] = {**out["labels"], "alertname": rng.choice(ROUTED)}
            out["startsAt"] = rng.choice(["not a date", 12, None, "2026-02-30T00:00:00Z"])
        return out
    if isinstance(value, list) and value and depth < 4 and rng.random() < 0.8:
        items = list(value)
        i = rng.randrange(len(items))
        items[i] = _mutate(rng, items[i], depth + 1)
        if rng.random() < 0.2:
            items = items * rng.randint(2, 30)
        return items
    return rng.choice(JUNK)


def _cases(count: int, seed: int = 20261126):
    rng = random.Random(seed)
    for n in range(count):
        endpoint = ENDPOINTS[n % 3]
        kind = rng.random()
        if kind < 0.06:
            yield endpoint, bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200)))  # not JSON at all
        elif kind < 0.10:
            yield endpoint, json.dumps(_valid(rng, endpoint))[: rng.randint(0, 200)].encode()  # cut short
        elif kind < 0.20:
            yield endpoint, json.dumps(_valid(rng, endpoint)).encode()  # valid, but routed nowhere
        else:
            payload = _valid(rng, endpoint)
            for _ in range(rng.randint(1, 3)):
                payload = _mutate(rng, payload)
            yield endpoint, json.dumps(payload).encode()


def test_ten_thousand_generated_alert_payloads_never_5xx_and_never_start_a_run(world, deployments):  # noqa: F811
    from deployments.intake import create_app

    _clean(deployments)
    statuses: dict[int, int] = {}
    started = 0
    count = 10_200
    app = create_app(_settings(notify_unmatched=False))

    async def deliver_all() -> int:
        """The real app with its lifespan, on one event loop (the test client's thread hand-off per
        request cost more than the intake itself)."""
        runs = 0
        async with app.router.lifespan_context(app), \
                httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://intake") as client:
            for endpoint, body in _cases(count):
                response = await client.post(
                    endpoint, content=body, headers={**AUTH, "Content-Type": "application/json"}
                )
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500, (endpoint, body[:300], response.text)
                if response.status_code >= 400:
                    assert response.json()["error"], "a refusal says why"
                else:
                    runs += len(response.json()["started"])
        return runs

    begin = time.monotonic()
    started = asyncio.run(deliver_all())
    elapsed = time.monotonic() - begin
    assert started == 0 and all(_runs(dep) == [] for dep in deployments.values())
    assert statuses.get(200, 0) > 500 and statuses.get(422, 0) > 3000 and statuses.get(400, 0) > 300, statuses
    print(f"{count} generated payloads over {len(ENDPOINTS)} endpoints in {elapsed:.1f} s: {statuses}; 0 runs")


# -- flow parameters, as the UI sends them ------------------------------------------------------------
@pytest.mark.parametrize("params, reason", [
    ({"service": "payments"}, "unknown service 'payments'"),
    ({"service": "API"}, "unknown service 'API'"),
    ({"service": "../../etc/passwd"}, "unknown service"),
    ({"service": "api; kubectl delete ns sandbox"}, "unknown service"),
    ({"service": "a" * 500}, "unknown service"),
    ({"service": "api", "environment": "prod"}, "environment 'prod' is not configured"),
    ({"service": "api", "severity": "P7"}, "severity"),
    ({"service": "api", "dry_run": "sometimes"}, "dry_run"),
    ({"service": 42}, "service"),
])
def test_bad_flow_parameters_fail_clearly_and_change_nothing(world, store, params, reason):
    from flows.service_down import service_down

    break_api(world)
    before = len(store.list(limit=500))
    with pytest.raises(Exception) as failure:
        service_down(**params)
    assert reason in str(failure.value), str(failure.value)
    assert len(store.list(limit=500)) == before and world.slack_messages == [] and api_image(world) == BROKEN_IMAGE


def test_the_ui_path_refuses_parameters_of_the_wrong_type():
    """A deployment as `prefect deploy` registers it (parameter schema, enforced): the server
    refuses a run whose parameters do not fit, before any run exists."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.callables import parameter_schema

    from flows.service_down import service_down

    with get_client(sync_client=True) as client:
        dep_id = client.create_deployment(
            flow_id=client.create_flow(service_down), name="schema-enforced",
            entrypoint="flows/service_down.py:service_down", enforce_parameter_schema=True,
            parameter_openapi_schema=parameter_schema(service_down).model_dump_for_openapi())
    api = PREFECT_API_URL.value()
    for params in ({"service": 42}, {"service": "api", "severity": "P7"}, {"service": "api", "dry_run": "maybe"},
                   {"environment": "sandbox"}):
        answer = http.post(f"{api}/deployments/{dep_id}/create_flow_run", json={"parameters": params}, timeout=10)
        assert answer.status_code in (409, 422), (params, answer.status_code, answer.text)
        assert "alidation" in answer.text, answer.text
    assert _runs(dep_id) == []


# -- config files -------------------------------------------------------------------------------------
BROKEN_CONFIGS = [
    (
        "services.api.scaling.max_replicas",
        {"scaling": {"min_replicas": 2, "max_replicas": 100000}},
        "less than or equal",
    ),
    ("services.api.scaling", {"scaling": {"min_replicas": 9, "max_replicas": 3}}, "above max_replicas"),
    ("services.api.scaling.min_replicas", {"scaling": {"min_replicas": -1, "max_replicas": 3}}, "greater than"),
    ("services.api.base_url", {"base_url": "ftp://x"}, "should match pattern"),
    (
        "services.api.kubernetes.namespace",
        {"kubernetes": {"namespace": "Bad_NS", "deployment": "api", "container": "api"}},
        "should match pattern",
    ),
    (
        "services.api.database.dsn_secret",
        {"database": {"dsn_secret": "postgresql://u:p@h/db"}},
        "not the secret itself",
    ),
    ("services.api.surprise", {"surprise": 1}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize("field, change, reason", BROKEN_CONFIGS)
def test_a_broken_config_file_names_the_field_and_the_reason(tmp_path, field, change, reason):
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "sandbox.yaml").read_text())
    raw["environments"]["sandbox"]["services"]["api"].update(change)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as failure:
        load_config(path)
    assert str(path) in str(failure.value) and field in str(failure.value) and reason in str(failure.value)


@pytest.mark.parametrize("approval, reason", [
    ({"require_verified": True, "approvers": []}, "require_verified needs at least one approver"),
    ({"four_eyes": ["P0"], "approvers": [{"name": "sam", "credential_secret": "approver-sam"}]}, "two approvers"),
    ({"approvers": [{"name": "sam", "credential_secret": "hunter2!"}]}, "not the secret itself"),
    ({"four_eyes": ["P9"]}, "four_eyes"),
    ({"four_eyes": ["P0"], "approvers": [{"name": "alice", "credential_secret": "approver-alice"},
                                         {"name": "Alice", "credential_secret": "approver-alice2"}]},
     "whatever their case"),
    ({"four_eyes": ["P0"], "approvers": [{"name": "alice", "credential_secret": "approver-shared"},
                                         {"name": "bob", "credential_secret": "approver-shared"}]},
     "share a credential_secret"),
])
def test_a_broken_approval_config_is_refused(tmp_path, approval, reason):
    import yaml

    raw = yaml.safe_load((ROOT / "config" / "sandbox.yaml").read_text())
    raw["environments"]["sandbox"]["approval"].update(approval)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="approval") as failure:
        load_config(path)
    assert reason in str(failure.value)


# -- approval input -------------------------------------------------------------------------------------
def test_bad_approval_input_is_rejected_and_the_run_keeps_waiting(world, store):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    for bad in ({"approve": "yes please", "approver": "al"}, {"approve": True}, {"approve": True, "approver": 5},
                {"approve": True, "approver": "   "}, {"approve": True, "approver": "al", "reason": "x" * 3000},
                {"approve": True, "approver": "a" * 300}, {"approve": [True], "approver": "al"},
                {"approve": True, "approver": "sam + tess (verified)"},
                {"approve": True, "approver": "sam (verified)"}):
        answer = run.resume(paused.id, **bad)
        assert answer.status.value == "REJECT", bad
        assert answer.details.reason, "a rejection says why"
    assert api_image(world) == BROKEN_IMAGE
    assert run.resume(paused.id, approve=False, approver="al", reason="looking").status.value == "ACCEPT"
    assert run.join(60)["outcome"] == "declined"
    assert api_image(world) == BROKEN_IMAGE
