"""An incident run from Slack only: `/incident` typed and buttons pressed in the sandbox's Slack,
each one a signed request to the intake, as Slack sends them. The thread, the issue and the
store (`runbooks incident`) must tell the same story at each step, and nobody without the
right changes anything."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from integrations import http
from sandbox.slack import block_problems, sign
from tests.conftest import SLACK_SIGNING_SECRET, FlowThread, api_image, break_api
from tests.test_intake import _continue, _runs, deployments, live_intake  # noqa: F401 - fixtures
from tests.test_intake import _wait_for as _until

pytestmark = pytest.mark.usefixtures("prefect_server")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def lifecycle(prefect_server):
    """The resolve-incident and post-incident deployments for this test only (no worker runs
    them: the test does); other tests rely on post-incident/sandbox not existing."""
    from prefect.client.orchestration import get_client

    from flows.post_incident import post_incident
    from flows.resolve_incident import resolve_incident

    ids = {}
    with get_client(sync_client=True) as client:
        for fn, path in ((resolve_incident, "flows/resolve_incident.py:resolve_incident"),
                         (post_incident, "flows/post_incident.py:post_incident")):
            ids[fn.name] = client.create_deployment(flow_id=client.create_flow(fn), name="sandbox", entrypoint=path)
    yield ids
    with get_client(sync_client=True) as client:
        for deployment_id in ids.values():
            client.delete_deployment(deployment_id)


@pytest.fixture
def slack_app(world, live_intake, lifecycle):  # noqa: F811
    world.slack.interactions_url = f"{live_intake}/slack/interactions"
    world.slack.commands_url = f"{live_intake}/slack/commands"
    yield live_intake
    world.slack.interactions_url = world.slack.commands_url = None


def _type(world, user: str, text: str, **extra) -> dict:
    """`user` types `/incident <text>`; Slack wants the app's answer within 3 s."""
    started = time.monotonic()
    answer = http.post(f"{world.url}/_sandbox/slack/command", json={"user": user, "text": text, **extra}, timeout=15)
    assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 3, "Slack wants the command answered within 3 s"
    return answer.json()


def _press(world, user: str, action: str, **extra) -> dict:
    answer = http.post(f"{world.url}/_sandbox/slack/press", json={"user": user, "action": action, **extra}, timeout=15)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _told(world, user: str, containing: str) -> str:
    """The answer only `user` sees (through the command's response_url), once it has come."""
    def found():
        return next((m["text"] for m in reversed(world.slack_messages) if m.get("ephemeral") and m["user"] == user
                     and containing in m["text"]), None)
    return _until(found, 30)


def _thread(world, parent: dict) -> list[str]:
    return [m["text"] for m in world.slack_messages if m["thread_ts"] == parent["ts"]]


def _parent(world) -> dict:
    return next(m for m in world.slack_messages if m["thread_ts"] is None and m["text"].startswith("🚨 INCIDENT ALERT"))


def _buttons(message: dict) -> list[str]:
    return [e.get("action_id") for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]]


def _work_until_paused(run_id) -> None:
    """The declared run, executed as the worker would, until it waits for its approval."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Pause
    from prefect.flow_engine import run_flow

    from flows.service_down import service_down

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run_id)
    worker = FlowThread(lambda: run_flow(service_down, flow_run=flow_run, parameters=flow_run.parameters))
    worker.wait_paused()
    with pytest.raises(Pause):
        worker.join(30)


def _run_deployed(deployment_id, flow) -> None:
    """The one run of a lifecycle deployment, executed as the worker would."""
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    run = _until(lambda: (_runs(deployment_id) or [None])[0])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(run.id)
    FlowThread(lambda: run_flow(flow, flow_run=flow_run, parameters=flow_run.parameters)).join(60)


def _cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _issue(world, incident) -> dict:
    return world.github.repo(incident.github_repo).issues[incident.github_issue - 1]


def _declare(world, store, deployments, user: str, text: str):  # noqa: F811
    _type(world, user, text)
    reply = _told(world, user, "declared")
    run = _until(lambda: (_runs(deployments["service-down"]) or [None])[0])
    incident = store.incident_for_run(str(run.id))
    assert reply.startswith(f"Incident {incident.id} declared: service-down for api in sandbox"), reply
    _work_until_paused(run.id)
    return run, store.get(incident.id)


def test_a_whole_incident_from_slack_declare_ack_roles_note_severity_approve_post_mortem(
        world, store, slack_app, deployments, lifecycle):  # noqa: F811
    from incidents.models import Severity

    break_api(world)
    run, incident = _declare(world, store, deployments, "U0SANDSAM",
                             "declare api service-down P1 env=sandbox api answers 503 since the deploy")
    assert incident.severity == Severity.P1 and incident.detected_by == "slack"
    assert incident.alert.annotations == {"summary": "api answers 503 since the deploy", "declared_by": "sam"}
    parent = _parent(world)
    assert "Incident Commander: <@U0SANDSAM>" in parent["text"]
    assert _buttons(parent)[-2:] == ["runbooks_ack", "runbooks_resolve"], parent["blocks"]

    # A second declaration of the same outage joins it, as a second alert would.
    _type(world, "U0SANDTESS", "declare api service-down P1 env=sandbox")
    joined = _told(world, "U0SANDTESS", "already has open incident")
    assert f"open incident {incident.id} (P1): your declaration joined it" in joined, joined
    assert len(_runs(deployments["service-down"])) == 1
    assert [i.id for i in store.list(limit=5, open_only=True) if i.dedup_key == "sandbox/api"] == [incident.id]

    # Refusals: said to the typist only, recorded, nothing changed.
    _type(world, "U0SANDMAL", f"ack {incident.id}")
    assert "not in the sandbox config's roles or approvers" in _told(world, "U0SANDMAL", "Refused")
    _type(world, "U0SANDOLA", f"severity {incident.id} P0")
    assert "only the incident's Incident Commander or an approver for P1" in _told(world, "U0SANDOLA", "Refused")
    refused = [e.message for e in store.timeline(incident.id) if e.kind == "command_refused"]
    assert len(refused) == 2 and "U0SANDMAL" in refused[0] and "severity" in refused[1], refused
    after = store.get(incident.id)
    assert after.acknowledged_at is None and after.severity == Severity.P1

    # Acknowledge on the parent message.
    assert _press(world, "U0SANDOLA", "acknowledge", ts=parent["ts"])["status"] == 200
    assert "acknowledged by @oncall-ola" in _told(world, "U0SANDOLA", "acknowledged")
    assert store.get(incident.id).acknowledged_by == "@oncall-ola"

    # Roles, the scribe's note and the new commander's severity call.
    _type(world, "U0SANDSAM", f"role {incident.id} commander <@U0SANDKIM|kim>")
    assert "handed over from @ic-sam to @comms-kim by sam" in _told(world, "U0SANDSAM", "handed over")
    _type(world, "U0SANDANA", f"note {incident.id} customers in the EU report checkout errors")
    _told(world, "U0SANDANA", "noted")
    _type(world, "U0SANDANA", f"note {incident.id} <!channel> look at <https://evil.example|this>")
    _until(lambda: any("look at" in t for t in _thread(world, parent)))
    escaped = next(t for t in _thread(world, parent) if "look at" in t)
    assert "<!channel>" not in escaped and "&lt;!channel&gt;" in escaped and "<https://" not in escaped, escaped
    _type(world, "U0SANDKIM", f"severity {incident.id} P0")
    assert "raised from P1 to P0 by @comms-kim" in _told(world, "U0SANDKIM", "Severity")
    current = store.get(incident.id)
    assert current.severity == Severity.P0 and store.assigned_roles(incident.id) == {"commander": "@comms-kim"}
    thread = _thread(world, parent)
    assert any("👤 Incident Commander: <@U0SANDKIM> takes over from <@U0SANDSAM>" in t for t in thread), thread
    assert any("📝 Note by @docs-ana: customers in the EU report checkout errors" in t for t in thread), thread
    assert any("Severity raised from P1 to P0 by @comms-kim" in t for t in thread), thread
    parent = world.slack.find(parent["channel"], parent["ts"])
    assert "Severity: P0" in parent["text"] and "Incident Commander: <@U0SANDKIM>" in parent["text"]
    assert "(acknowledged by @oncall-ola)" in parent["text"] and _buttons(parent)[-1:] == ["runbooks_resolve"]
    issue = _issue(world, current)
    assert "P0" in {label["name"] for label in issue["labels"]} and issue["title"].startswith("[P0]"), issue
    assert "**Commander:** @comms-kim" in issue["body"], issue["body"]
    assert "customers in the EU report checkout errors" in issue["body"]
    shown = _cli("incident", str(incident.id))
    assert "Incident Commander @comms-kim" in shown and "P0" in shown and "command_refused" in shown, shown

    # Approve on the approval message; the runbook acts, verifies, resolves, asks for the post-mortem.
    pending = store.approvals(incident.id)[0]
    assert _press(world, "U0SANDSAM", "approve")["status"] == 200
    signed = _until(lambda: store.signatures(pending.id))
    assert [(s.approver, s.decision) for s in signed] == [("sam", "approve")]
    assert _continue(run.id)["outcome"] == "resolved"
    assert store.approval(pending.id).decision == "approved"
    assert api_image(world).endswith(":v1.5.0")
    resolved = store.get(incident.id)
    assert resolved.resolved_at is not None
    assert "postmortem_started" in [e.kind for e in store.timeline(incident.id)]
    parent = world.slack.find(parent["channel"], parent["ts"])
    assert "Status: ✅ Resolved" in parent["text"] and "runbooks_resolve" not in _buttons(parent)
    issue = _issue(world, resolved)
    assert issue["state"] == "closed" and "Resolved" in issue["body"], issue["body"]
    _type(world, "U0SANDKIM", f"role {incident.id} scribe @dev-ivy")
    assert "its roles are history" in _told(world, "U0SANDKIM", "resolved")
    for message in world.slack_messages:
        assert block_problems(message["blocks"]) == [], message


def test_resolve_from_the_parent_message_opens_a_form_and_stops_the_waiting_runbook(
        world, store, slack_app, deployments, lifecycle):  # noqa: F811
    from flows.resolve_incident import resolve_incident

    break_api(world)
    run, incident = _declare(world, store, deployments, "U0SANDOLA", "declare api service-down env=sandbox")
    assert incident.severity.value == "P0", "service-down's default for a declare that names none"
    parent = _parent(world)

    _press(world, "U0SANDOLA", "resolve", ts=parent["ts"])  # on-call, not the commander nor an approver
    assert "only the incident's Incident Commander or an approver" in _told(world, "U0SANDOLA", "Refused")
    assert world.slack.views == []

    _press(world, "U0SANDSAM", "resolve", ts=parent["ts"])
    opened = _until(lambda: world.slack.views)
    assert opened[0]["user"] == "U0SANDSAM" and opened[0]["view"]["private_metadata"] == str(incident.id)
    empty = http.post(f"{world.url}/_sandbox/slack/submit", json={"user": "U0SANDSAM",
                                                                  "values": {"resolution": {"note": "  "}}}).json()
    assert empty["errors"] == {"resolution": "say how it was resolved"} and not empty["closed"]
    sent = http.post(f"{world.url}/_sandbox/slack/submit", json={"user": "U0SANDSAM", "values": {
        "resolution": {"note": "restarted the api by hand; it serves again"}}}).json()
    assert sent["status"] == 200 and sent["closed"], sent
    _run_deployed(lifecycle["resolve-incident"], resolve_incident)
    resolved = store.get(incident.id)
    assert resolved.resolved_at is not None and "restarted the api by hand" in (resolved.resolution or "")
    kinds = [e.kind for e in store.timeline(incident.id)]
    assert "resolved_by_hand" in kinds and "postmortem_started" in kinds, kinds
    assert [a.decision for a in store.approvals(incident.id)] == ["withdrawn"], "the waiting runbook is stopped"
    assert _continue(run.id)["outcome"] != "resolved", "woken, it finds the incident resolved and does nothing"
    assert api_image(world) != "registry.sandbox.local/acme/api:v1.5.0"


def test_unsigned_stale_and_replayed_commands_get_401_or_nothing(world, store, slack_app, deployments):  # noqa: F811
    body = "command=%2Fincident&text=declare+api+service-down+P0+env%3Dsandbox&user_id=U0SANDSAM&channel_id=C0SANDINC"
    url = f"{slack_app}/slack/commands"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    now = str(int(time.time()))
    old = str(int(time.time()) - 400)
    for headers in ({}, {"X-Slack-Request-Timestamp": now, "X-Slack-Signature": sign("wrong", now, body.encode())},
                    {"X-Slack-Request-Timestamp": old, "X-Slack-Signature": sign(SLACK_SIGNING_SECRET, old,
                                                                                 body.encode())}):
        assert http.post(url, content=body, headers={**form, **headers}, timeout=10).status_code == 401
    assert _type(world, "U0SANDSAM", "declare api service-down env=sandbox", age_seconds=360)["status"] == 401
    signed = {**form, "X-Slack-Request-Timestamp": now, "X-Slack-Signature": sign(SLACK_SIGNING_SECRET, now,
                                                                                  body.encode())}
    first = http.post(url, content=body, headers=signed, timeout=10)
    replayed = http.post(url, content=body, headers=signed, timeout=10)
    assert first.status_code == 200 and "⏳" in first.json()["text"]
    assert replayed.status_code == 200 and replayed.content == b"", "a replay is acknowledged and not acted on"
    _until(lambda: _runs(deployments["service-down"]))
    time.sleep(1)
    assert len(_runs(deployments["service-down"])) == 1, "one declaration, one run"
    assert _type(world, "U0SANDSAM", "reboot everything")["body"].count("unknown command") == 1
    _type(world, "U0SANDMAL", "declare api service-down env=sandbox")
    assert "nothing was declared" in _told(world, "U0SANDMAL", "not in the sandbox config")
    _type(world, "U0SANDSAM", "declare paymentz service-down env=sandbox")
    assert "unknown service 'paymentz'" in _told(world, "U0SANDSAM", "Not declared")
    _type(world, "U0SANDSAM", "declare api service-down")  # C0SANDINC is several test environments' channel
    ambiguous = _told(world, "U0SANDSAM", "add env=<name>")
    assert "the incident channel of " in ambiguous and "sandbox-verified" in ambiguous, ambiguous
    assert not any("ALERT NOT STARTED" in m["text"] for m in world.slack_messages), "a typo is told to its typist"
    assert len(_runs(deployments["service-down"])) == 1, "nothing more was started"
