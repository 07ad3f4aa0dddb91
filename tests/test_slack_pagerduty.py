"""Pages that ring and approvals where people are: mentions from Slack IDs, one thread per
incident, signed Approve/Decline presses in Slack, PagerDuty Events v2 and its webhooks back.

The sandbox's Slack and PagerDuty check what they receive against the vendors' documented
shapes (Block Kit limits, Events API v2 fields); these tests check every recorded request
against the same rules as well."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from urllib.parse import urlencode

import pytest

from integrations import http
from sandbox.pagerduty import event_problems, routing_key
from sandbox.slack import block_problems, sign
from tests.conftest import (
    APPROVER_CREDENTIALS,
    BROKEN_IMAGE,
    SLACK_SIGNING_SECRET,
    FlowThread,
    api_image,
    break_api,
    kubectl,
)
from tests.test_intake import _settings, deployments, live_intake  # noqa: F401 - fixtures
from tests.test_intake import _wait_for as _until

pytestmark = pytest.mark.usefixtures("prefect_server")


def _press(world, user: str, action: str = "approve", **extra) -> dict:
    answer = http.post(f"{world.url}/_sandbox/slack/press", json={"user": user, "action": action, **extra}, timeout=15)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _connect(world, intake: str) -> None:
    world.slack.interactions_url = f"{intake}/slack/interactions"
    world.pagerduty.webhook_url = f"{intake}/pagerduty/webhooks"


def _vendor_shapes_hold(world) -> None:
    for message in world.slack_messages:
        assert block_problems(message["blocks"]) == [], message
    for event in world.pagerduty.events:
        assert event_problems({k: v for k, v in event.items() if k != "received_at"}) == [], event


def _press_body(world, action_id: str, user: str = "U0SANDSAM") -> str:
    """The form body Slack sends when `user` presses a button of the APPROVAL NEEDED message."""
    notice = next(m for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED"))
    button = next(e for b in notice["blocks"] if b["type"] == "actions" for e in b["elements"]
                  if e.get("action_id") == action_id)
    return urlencode({"payload": json.dumps(world.slack.payload(user, notice, {**button, "block_id": "a"}))})


def _ephemeral(world, user: str) -> list[str]:
    return [m["text"] for m in world.slack_messages if m.get("ephemeral") and m["user"] == user]


def test_mentions_come_from_configured_ids_and_never_from_outside_text(world, store):
    from incidents import templates
    from incidents.config import load_environment
    from tasks.context import RunContext
    from tasks.notify import send_slack

    roles = load_environment("sandbox").roles
    assert roles.mention("@ic-sam") == "<@U0SANDSAM>"
    assert roles.mention("@oncall-ola") == "<@U0SANDOLA> <!subteam^S0SANDONCALL>"
    hostile = "db down <@U0SANDSAM> <!channel> <!subteam^S0SANDONCALL> @here <https://evil.example|click>"
    incident = store.open_incident(dedup_key="mentions", scenario="service-down", service="api", environment="sandbox",
                                   severity=_sev("P1"), title="t", detected_by="test", flow_run_id=None, alert=None)
    text = templates.initial_alert(incident, hostile, paged=roles.mentions(["@oncall-ola", "@lead-tess"]),
                                   commander=roles.mention("@ic-sam"))
    summary = next(line for line in text.splitlines() if line.startswith("Summary:"))
    assert "<" not in summary and "&lt;!channel&gt;" in summary and "&lt;@U0SANDSAM&gt;" in summary
    assert "@\u200bhere" in summary
    assert text.splitlines()[-1] == "Paging: <@U0SANDOLA> <!subteam^S0SANDONCALL> <@U0SANDTESS>"
    # a team without a Slack app: the same mentions, flat through the incoming webhook
    ctx = RunContext("sandbox-webhook", "api", load_environment("sandbox-webhook"))
    assert send_slack(ctx, incident.id, text)
    posted = world.slack_messages[-1]
    assert posted["via"] == "webhook" and posted["thread_ts"] is None and "<@U0SANDOLA>" in posted["text"]


def _sev(value: str):
    from incidents.models import Severity

    return Severity(value)


def test_two_incidents_two_threads_and_every_message_in_its_own(world, store):
    from flows.service_down import service_down

    break_api(world)
    kubectl(world, "-n", "sandbox", "set", "image", "deployment/frontend",
            "frontend=registry.sandbox.local/acme/frontend:v9-broken")
    runs, paused = {}, {}
    for name in ("api", "frontend"):  # one after the other: a FlowThread finds its pause by start time
        runs[name] = FlowThread(service_down, service=name, severity="P1")
        paused[name] = runs[name].wait_paused()
        time.sleep(1.2)
    parents = [m for m in world.slack_messages if m["thread_ts"] is None]
    assert len(parents) == 2 and all(p["text"].startswith("🚨 INCIDENT ALERT") for p in parents)
    for parent in parents:
        service = "api" if "Service: api" in parent["text"] else "frontend"
        replies = [m for m in world.slack_messages if m["thread_ts"] == parent["ts"]]
        assert replies and all(f"Service: {service}" in m["text"] or "Service:" not in m["text"] for m in replies)
    assert all(m["thread_ts"] in {p["ts"] for p in parents} for m in world.slack_messages if m["thread_ts"])
    notice = next(m for m in world.slack_messages if m["text"].startswith("⏸️ APPROVAL NEEDED"))
    actions = next(b for b in notice["blocks"] if b["type"] == "actions")
    assert [e.get("action_id") for e in actions["elements"]][:2] == ["runbooks_approve", "runbooks_decline"]
    assert "Approvers: <@U0SANDSAM> <@U0SANDTESS>" in notice["text"]  # rita may not approve P1: not called
    _vendor_shapes_hold(world)
    for name, run in runs.items():
        run.resume(paused[name].id, approve=False, approver="carol", reason="not now")
        assert run.join(60)["outcome"] == "declined"


@pytest.fixture
def slack_intake(world, live_intake):  # noqa: F811
    _connect(world, live_intake)
    yield live_intake
    world.slack.interactions_url = world.pagerduty.webhook_url = None


def test_a_signed_press_by_sam_approves_and_completes_the_run_as_verified(world, store, slack_intake):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))

    # Not an approver, or not one for this severity: told so privately, nothing changes.
    assert _press(world, "U0SANDMAL")["status"] == 200
    _until(lambda: _ephemeral(world, "U0SANDMAL"))
    assert _ephemeral(world, "U0SANDMAL") == ["You are not an approver for P1 in sandbox; nothing changed."]
    _press(world, "U0SANDRITA")
    _until(lambda: _ephemeral(world, "U0SANDRITA"))
    assert "not an approver for P1" in _ephemeral(world, "U0SANDRITA")[0]
    assert store.signatures(approval.id) == [] and store.approval(approval.id).decision is None
    assert any(
        e.kind == "approval_refused" and "U0SANDMAL" in e.message for e in store.timeline(approval.incident_id)
    )

    started = time.monotonic()
    pressed = _press(world, "U0SANDSAM")
    assert pressed["status"] == 200 and time.monotonic() - started < 3, "Slack wants its answer within 3 s"
    result = run.join(120)
    assert result["outcome"] == "resolved" and result["decision"]["approver"] == "sam (verified)"
    assert api_image(world).endswith(":v1.5.0")
    decided = store.approval(approval.id)
    assert decided.verified and decided.approver == "sam (verified)"
    signed = [e for e in store.timeline(approval.incident_id) if e.kind == "approval_signed"]
    assert len(signed) == 1 and signed[0].actor == "sam" and "Slack" in signed[0].message
    message = world.slack.find(world.slack_messages[0]["channel"], pressed["ts"])
    assert "<@U0SANDSAM> (sam, verified in Slack)" in message["text"]
    assert not any(e.get("action_id") in ("runbooks_approve", "runbooks_decline")
                   for b in message["blocks"] if b["type"] == "actions" for e in b["elements"])
    _vendor_shapes_hold(world)


def test_unsigned_wrongly_signed_and_stale_presses_get_401_and_change_nothing(world, store, slack_intake):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    body = _press_body(world, "runbooks_approve")
    url = f"{slack_intake}/slack/interactions"
    now = str(int(time.time()))
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    cases = {
        "unsigned": {},
        "wrongly signed": {
            "X-Slack-Request-Timestamp": now,
            "X-Slack-Signature": sign("not-the-secret", now, body.encode()),
        },
        "stale": {
            "X-Slack-Request-Timestamp": str(int(time.time()) - 400),
            "X-Slack-Signature": sign(SLACK_SIGNING_SECRET, str(int(time.time()) - 400), body.encode()),
        },
        "body changed": {
            "X-Slack-Request-Timestamp": now,
            "X-Slack-Signature": sign(SLACK_SIGNING_SECRET, now, body.replace("U0SANDSAM", "U0SANDTESS").encode()),
        },
    }
    for name, headers in cases.items():
        answer = http.post(url, content=body, headers={**form, **headers}, timeout=10)
        assert answer.status_code == 401, (name, answer.text)
    assert _press(world, "U0SANDSAM", age_seconds=360)["status"] == 401  # replayed after 6 minutes
    time.sleep(1)
    assert store.signatures(approval.id) == [] and store.approval(approval.id).decision is None
    assert api_image(world) == BROKEN_IMAGE
    run.resume(paused.id, approve=False, approver="carol", reason="done testing")
    assert run.join(60)["outcome"] == "declined"


def test_two_presses_by_two_approvers_satisfy_four_eyes_for_p0(world, store, slack_intake):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    first = _press(world, "U0SANDSAM")
    _until(lambda: len(store.signatures(approval.id)) == 1)
    time.sleep(0.5)
    message = world.slack.find(world.slack_messages[0]["channel"], first["ts"])
    assert "waiting for 1 more" in message["text"]
    assert any(e.get("action_id") == "runbooks_approve" for b in message["blocks"] if b["type"] == "actions"
               for e in b["elements"]), "the buttons stay for the second approver"
    _press(world, "U0SANDSAM")  # the same person twice is not four eyes
    _until(lambda: any("different approver" in t for t in _ephemeral(world, "U0SANDSAM")))
    assert api_image(world) == BROKEN_IMAGE
    _press(world, "U0SANDTESS")
    result = run.join(120)
    assert result["outcome"] == "resolved" and result["decision"]["approver"] == "sam + tess (verified)"


def test_a_ui_approver_name_cannot_mention_a_channel(world, store):
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified", severity="P1")
    paused = run.wait_paused()
    evil = "<!channel> <https://evil.example|Approve here> @here"
    assert run.resume(paused.id, approve=True, approver=evil, reason="x").status.value == "ACCEPT"
    notice = _until(lambda: next((m["text"] for m in world.slack_messages
                                  if m["text"].startswith("⚠️ APPROVAL NOT COUNTED")), None))
    assert "<!channel>" not in notice and "<https://evil" not in notice and "&lt;!channel&gt;" in notice
    run.resume(_until(lambda: run.wait_paused()).id, approve=False, approver="carol", reason="stop")
    assert run.join(60)["outcome"] == "declined"


def test_a_prefect_outage_during_an_approval_page_post_does_not_strand_the_decision(world, store, live_intake):  # noqa: F811
    import threading

    import uvicorn

    from deployments.intake import create_app
    from flows.service_down import service_down
    from tests.conftest import free_port

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    port = free_port()  # an intake whose Prefect API is down
    server = uvicorn.Server(uvicorn.Config(create_app(_settings(prefect_api_url="http://127.0.0.1:9/api")),
                                           host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    _until(lambda: server.started, 10)
    form = {"approver": "sam", "credential": APPROVER_CREDENTIALS["sam"], "decision": "approve", "reason": "v2 broke"}
    try:
        down = http.post(f"http://127.0.0.1:{port}/approvals/{approval.token}", data=form, timeout=15)
    finally:
        server.should_exit = True
    assert down.status_code == 503 and "not recorded" in down.json()["message"], down.text
    assert store.signatures(approval.id) == [] and store.approval(approval.id).decision is None
    again = http.post(f"{live_intake}/approvals/{approval.token}", data=form, timeout=15)
    assert again.status_code == 200, again.text
    assert run.join(120)["outcome"] == "resolved"
    # the link carries a random token: the sequential id does not open it
    assert http.get(f"{live_intake}/approvals/{approval.id}", timeout=10).status_code == 404


def test_wrong_credentials_are_slowed_down(world, store, live_intake):  # noqa: F811
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified", severity="P1")
    paused = run.wait_paused()
    page = f"{live_intake}/approvals/{store.approval_for_run(str(paused.id)).token}"
    wrong = {"approver": "tess", "credential": "guess", "decision": "approve"}
    answers = [http.post(page, data=wrong, timeout=10) for _ in range(4)]
    assert [a.status_code for a in answers] == [403, 403, 403, 429]
    assert int(answers[-1].headers["Retry-After"]) >= 1
    right = http.post(page, data={**wrong, "credential": APPROVER_CREDENTIALS["tess"]}, timeout=10)
    assert right.status_code == 429, "while slowed down, not even the right credential is checked"
    run.resume(paused.id, approve=False, approver="carol", reason="stop")
    assert run.join(60)["outcome"] == "declined"


def test_pagerduty_trigger_acknowledge_resolve_one_dedup_key_and_an_acknowledgement_stops_escalation(
        world, store, slack_intake):
    from flows.service_down import service_down
    from incidents.config import load_environment
    from tasks.context import RunContext
    from tasks.paging import trigger_pagers
    from tasks.watch import sweep

    break_api(world)
    run = FlowThread(service_down, service="api")  # P0: level 0 pages pagerduty.sre
    paused = run.wait_paused()
    incident = store.incident_for_run(str(paused.id))
    key = f"runbooks/sandbox/incident-{incident.id}"
    triggers = [e for e in world.pagerduty.events if e["event_action"] == "trigger"]
    assert len(triggers) == 1 and triggers[0]["dedup_key"] == key
    assert triggers[0]["routing_key"] == routing_key("sre") and triggers[0]["payload"]["severity"] == "critical"
    # a repeat (a retry, a severity raise) collapses into the same PagerDuty alert
    trigger_pagers(RunContext("sandbox", "api", load_environment("sandbox")), store.get(incident.id), 0)
    assert len([e for e in world.pagerduty.events if e["event_action"] == "trigger"]) == 2
    assert len(world.pagerduty.alerts) == 1 and next(iter(world.pagerduty.alerts.values()))["events"] == 2

    # Ola acknowledges in PagerDuty: the signed webhook comes back and the escalation stops.
    acted = http.post(f"{world.url}/_sandbox/pagerduty/act", json={"dedup_key": key, "action": "acknowledge",
                                                                    "user": "Ola Oncall"}, timeout=15).json()
    assert acted["status"] == 200 and json.loads(acted["body"])["escalation_stopped"] is True
    assert store.get(incident.id).acknowledged_by == "Ola Oncall (PagerDuty)"
    assert sweep("sandbox", now=incident.opened_at + timedelta(minutes=10)).escalated == []  # P0: due at 5
    assert any("Acknowledged in PagerDuty by Ola Oncall" in m["text"] for m in world.slack_messages)
    forged = http.post(f"{slack_intake}/pagerduty/webhooks", content=b'{"event": {}}', timeout=10,
                       headers={"X-PagerDuty-Signature": "v1=00"})
    assert forged.status_code == 401

    _press(world, "U0SANDSAM")
    assert run.join(120)["outcome"] == "resolved"
    actions = [(e["event_action"], e["dedup_key"]) for e in world.pagerduty.events]
    assert ("acknowledge", key) in actions and actions[-1] == ("resolve", key)
    assert {d for _, d in actions} == {key}
    assert next(iter(world.pagerduty.alerts.values()))["status"] == "resolved"
    _vendor_shapes_hold(world)


def test_an_unacknowledged_p0_escalates_to_the_next_pagerduty_service(world, store):
    from tasks.watch import sweep

    incident = store.open_incident(dedup_key="pd-escalation", scenario="service-down", service="api",
                                   environment="sandbox", severity=_sev("P0"), title="[P0] api: down",
                                   detected_by="test", flow_run_id=None, alert=None)
    sweep("sandbox", now=incident.opened_at + timedelta(minutes=1))  # the watch retries level 0's page
    sweep("sandbox", now=incident.opened_at + timedelta(minutes=5))  # P0's response time: level 1
    keys = [e["routing_key"] for e in world.pagerduty.events if e["event_action"] == "trigger"]
    assert keys == [routing_key("sre"), routing_key("leads")]
    escalation = next(m["text"] for m in world.slack_messages if "ESCALATION level 1" in m["text"])
    assert "Paging: <@U0SANDBEN> <@U0SANDRAJ> <@U0SANDDAN>" in escalation


def test_a_pagerduty_outage_never_stops_the_run_and_the_watch_pages_again(world, store):
    from flows.service_down import service_down
    from sandbox.http import Fault
    from tasks.watch import sweep

    break_api(world)
    world.faults.set("pagerduty", Fault(status=503))
    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    incident = store.incident_for_run(str(paused.id))
    assert world.pagerduty.events == []
    assert any(
        e.kind == "notification_failed" and "PagerDuty trigger" in e.message for e in store.timeline(incident.id)
    )
    world.faults.clear()
    sweep("sandbox", now=incident.opened_at + timedelta(seconds=30))
    assert [e["event_action"] for e in world.pagerduty.events] == ["trigger"]
    run.resume(paused.id, approve=True, approver="carol", reason="go")
    assert run.join(120)["outcome"] == "resolved"


def test_a_run_cancelled_while_it_waits_closes_its_approval_and_a_press_then_says_so(world, store, slack_intake):
    """A run suspended at its approval has no process: Cancel runs no hook. The watch closes its
    request and records the Cancel; a press afterwards changes nothing and says why."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from flows.service_down import service_down
    from tasks.watch import sweep

    break_api(world)
    run = FlowThread(service_down, service="api", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    with get_client(sync_client=True) as client:  # what the UI's Cancel does to a run with no process
        client.set_flow_run_state(paused.id, Cancelled(message="Cancelled by dana: taking over"), force=True)
    with store._connect() as conn:  # asked for a minute ago: the watch leaves fresh requests alone
        conn.execute("UPDATE approvals SET requested_at = now() - interval '1 minute' WHERE id = %s", (approval.id,))
    assert approval.id in sweep("sandbox").ended_runs
    closed = store.approval(approval.id)
    assert closed.decision == "withdrawn" and "without an answer" in closed.reason
    cancelled = [e for e in store.timeline(approval.incident_id) if e.kind == "cancelled"]
    # the UI names no one: its message is quoted as given, and no name is read out of it
    assert len(cancelled) == 1 and cancelled[0].actor == "an operator (Prefect UI or API)", cancelled
    assert "(Cancelled by dana: taking over)" in cancelled[0].message and "nothing was changed" in cancelled[0].message
    assert any("Runbook cancelled" in m["text"] for m in world.slack_messages)
    _press(world, "U0SANDSAM")
    _until(lambda: _ephemeral(world, "U0SANDSAM"))
    assert "already decided: withdrawn" in _ephemeral(world, "U0SANDSAM")[0]
    assert store.signatures(approval.id) == [] and api_image(world) == BROKEN_IMAGE
    assert sweep("sandbox").ended_runs == []  # once


def test_a_replayed_signed_press_is_acknowledged_and_not_acted_on(world, store, slack_intake):
    """Slack's signature is valid for 5 minutes: the same signed request again (a replay, or a
    retried delivery) is answered 200 and handled once."""
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    body = _press_body(world, "runbooks_decline")
    now = str(int(time.time()))
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": now,
               "X-Slack-Signature": sign(SLACK_SIGNING_SECRET, now, body.encode())}
    for _ in range(3):
        answer = http.post(f"{slack_intake}/slack/interactions", content=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
    assert run.join(60)["outcome"] == "declined"
    time.sleep(1)
    signed = [e for e in store.timeline(approval.incident_id) if e.kind == "approval_signed"]
    assert len(signed) == 1, [e.message for e in signed]
    assert not [e for e in store.timeline(approval.incident_id) if e.kind == "approval_not_delivered"]


@pytest.mark.parametrize("path", ["/slack/interactions", "/pagerduty/webhooks"])
def test_a_signature_header_outside_ascii_is_a_wrong_signature_not_an_error(slack_intake, path):
    headers = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": "v0=\u00e9\u00e9",
               "X-PagerDuty-Signature": "v1=\u00e9\u00e9", "Content-Type": "application/x-www-form-urlencoded"}
    raw = [(k.encode(), v.encode("latin-1")) for k, v in headers.items()]  # bytes that are not valid text
    answer = http.post(f"{slack_intake}{path}", content=b"payload=%7B%7D", headers=raw, timeout=10)
    assert answer.status_code == 401, answer.text


@pytest.mark.parametrize("path", ["/slack/interactions", "/pagerduty/webhooks", "/approvals/" + "a" * 32,
                                  "/alerts/alertmanager"])
def test_every_route_answers_an_oversized_body_before_it_has_all_been_sent(slack_intake, path):
    """A sender that declares no length streams 2 MiB and keeps the request open: each route
    answers 413 (or 401) from what it has read so far, instead of waiting for the rest."""
    import socket
    from urllib.parse import urlsplit

    where = urlsplit(slack_intake)
    with socket.create_connection((where.hostname, where.port), timeout=10) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: intake\r\nTransfer-Encoding: chunked\r\n"
                     "Content-Type: application/json\r\nAuthorization: Bearer wrong\r\n\r\n".encode())
        chunk = b"x" * 65536
        for _ in range(32):
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.settimeout(5)  # the request is not finished: only an early answer arrives
        head = conn.recv(200).decode("latin-1")
    assert head.startswith(("HTTP/1.1 413", "HTTP/1.1 401")), head


def test_parallel_guesses_are_counted_one_by_one_and_never_lock_the_real_approver_out(
        world, store, live_intake, monkeypatch):  # noqa: F811
    """50 wrong guesses at once as tess from one address: 3 reach the credential check; tess
    herself, from her own address behind the same trusted proxy, is not locked out."""
    from concurrent.futures import ThreadPoolExecutor

    from flows.service_down import service_down

    monkeypatch.setenv("RUNBOOKS_TRUSTED_PROXIES", "127.0.0.0/8")
    break_api(world)
    run = FlowThread(service_down, service="api", environment="sandbox-verified", severity="P1")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    page = f"{live_intake}/approvals/{approval.token}"
    wrong = {"approver": "tess", "credential": "guess", "decision": "approve"}

    def guess(_):
        return http.post(page, data=wrong, timeout=30, headers={"X-Forwarded-For": "203.0.113.5"}).status_code

    with ThreadPoolExecutor(25) as pool:
        statuses = list(pool.map(guess, range(50)))
    assert statuses.count(403) == 3 and statuses.count(429) == 47, statuses
    refused = [e for e in store.timeline(approval.incident_id) if e.kind == "approval_refused"]
    assert len(refused) == 3, "only three guesses reached the credential check"
    spoofed = http.post(page, data=wrong, timeout=10, headers={"X-Forwarded-For": "198.51.100.8, 203.0.113.5"})
    assert spoofed.status_code == 429, "a client cannot claim another address in front of the proxy's"
    real = http.post(page, timeout=15, headers={"X-Forwarded-For": "198.51.100.8"},
                     data={**wrong, "credential": APPROVER_CREDENTIALS["tess"], "decision": "decline"})
    assert real.status_code == 200, real.text
    assert run.join(60)["outcome"] == "declined"
