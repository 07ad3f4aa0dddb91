"""Evidence without secrets: one redaction step for everything copied from the outside world."""

from __future__ import annotations

import json

import pytest

from incidents.redaction import MARK, redact, remember_secret

JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkFkYSJ9.SflKxwRJSMeKKF2QT4fwpMeJf36P"
KEY = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx\nabc\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize("line, secret", [
    ("Authorization: Bearer s3cr3t-t0ken-value", "s3cr3t-t0ken-value"),
    ("connecting to postgresql://app:hunter2pass@db:5432/app", "hunter2pass"),
    ("https://user:p%40ss@example.com/x", "p%40ss"),
    (f"session {JWT}", JWT),
    (f"key follows\n{KEY}\nafter", "MIIEowIBAAKCAQEAx"),
    ("api_key=AbCdEf123456 user=ada", "AbCdEf123456"),
    ('{"password": "correct horse", "user": "ada"}', "correct"),
    ("client_secret: 9f8e7d6c5b", "9f8e7d6c5b"),
    ("token ghp_0123456789abcdefghijABCDEFGHIJ012345 used", "ghp_0123456789abcdefghijABCDEFGHIJ012345"),
    ("slack xoxb-1234567890-abcdefghij posted", "xoxb-1234567890-abcdefghij"),
    ("aws AKIAABCDEFGHIJKLMNOP in env", "AKIAABCDEFGHIJKLMNOP"),
])
def test_each_kind_of_secret_is_redacted(line, secret):
    out = redact(line)
    assert secret not in out and MARK in out, out


def test_a_secret_the_runbooks_resolved_is_redacted_wherever_it_shows():
    remember_secret("plain-value-9731")
    assert redact("value plain-value-9731 leaked") == f"value {MARK} leaked"
    assert redact("ordinary log line: GET /health 200 1ms") == "ordinary log line: GET /health 200 1ms"
    assert redact("the token refilled quickly; a bearer of news") == "the token refilled quickly; a bearer of news"


@pytest.mark.usefixtures("prefect_server")
def test_a_pod_log_with_a_token_a_password_url_and_a_jwt_is_redacted_everywhere_it_is_copied(world, store):
    from prefect.client.orchestration import get_client

    from flows.service_down import service_down
    from tests.conftest import FlowThread, break_api, read_all

    break_api(world)
    world.cluster.app_log_lines[("sandbox", "api")] = [
        "ERROR upstream call failed, Authorization: Bearer live-token-4242aa",
        "ERROR cannot connect to postgresql://app:pw-5151bb@db.internal:5432/app",
        f"WARN rejected session {JWT}"]
    run = FlowThread(service_down, service="api", severity="P2")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    run.resume(paused.id, approve=False, approver="ana", reason="test")
    run.join(60)
    with get_client(sync_client=True) as client:
        artifacts = [json.dumps(a.data) for a in read_all(client.read_artifacts)
                     if a.key and a.key.startswith(f"incident-{approval.incident_id}-")]
    comments = [c["body"] for c in world.github.repo("acme/incidents").comments.get(
        store.get(approval.incident_id).github_issue, [])]
    places = {"artifacts": "\n".join(artifacts), "issue comments": "\n".join(comments),
              "slack": json.dumps(world.slack_messages), "approval findings": json.dumps(approval.findings),
              "timeline": "\n".join(e.message for e in store.timeline(approval.incident_id))}
    assert MARK in places["issue comments"] and MARK in places["artifacts"], "the log was copied, redacted"
    for where, text in places.items():
        for secret in ("live-token-4242aa", "pw-5151bb", JWT):
            assert secret not in text, f"{secret} in {where}"


def test_alert_annotations_are_redacted_where_they_enter():
    from incidents.alerts import parse_alertmanager
    from incidents.redaction import redact_alert

    body = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {
                "status": "firing",
                "startsAt": "2026-11-28T03:00:00Z",
                "labels": {"alertname": "ServiceDown", "service": "api"},
                "annotations": {
                    "summary": "probe failed with Authorization: Bearer abcdefgh12345678",
                    "suspicious_ips": "203.0.113.7",
                },
            }
        ],
    }
    [alert] = parse_alertmanager(body)
    assert "abcdefgh12345678" not in str(alert.as_parameter()) and alert.annotations["suspicious_ips"] == "203.0.113.7"
    manual = {"labels": {"service": "api"}, "annotations": {"summary": f"jwt {JWT}"}}
    assert JWT not in str(redact_alert(manual)) and redact_alert(None) is None
