"""The service-down runbook end to end: real Prefect server, real PostgreSQL, the sandbox for
Kubernetes, GitHub and Slack, and the real kubectl to break things."""

from __future__ import annotations

import json
import time

import pytest

from integrations import http
from tests.conftest import BROKEN_IMAGE, FlowThread, api_image, break_api, kubectl, read_all

pytestmark = pytest.mark.usefixtures("prefect_server")


def _texts(world) -> list[str]:
    return [m["text"] for m in world.slack_messages]


def _form(run_id) -> dict:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        keyset = run.state.state_details.run_input_keyset
        return {"description": client.read_flow_run_input(run_id, keyset["description"]),
                "schema": client.read_flow_run_input(run_id, keyset["schema"])}


def test_broken_deploy_is_approved_rolled_back_and_resolved(world, store):
    from flows.service_down import service_down

    break_api(world)
    assert http.get(f"{world.url}/services/api/__ok").status_code == 503

    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    form = _form(paused.id)
    assert (
        "rollback" in form["description"]
        and "revision 3" in form["description"]
        and "revision 2" in form["description"]
    )
    assert "v2-broken" in form["description"]
    assert set(json.loads(form["schema"])["properties"]) == {"approve", "approver", "reason"}
    notice = [t for t in _texts(world) if t.startswith("⏸️ APPROVAL NEEDED")]
    assert notice and f"/runs/flow-run/{paused.id}" in notice[0]
    assert api_image(world) == BROKEN_IMAGE, "nothing may change before the approval"

    # A submission without a name is refused by the server and the run keeps waiting.
    rejected = run.resume(paused.id, approve=True, approver="", reason="go")
    assert rejected.status.value == "REJECT" and "approver" in rejected.details.reason
    accepted = run.resume(paused.id, approve=True, approver="alice", reason="v2 broke it")
    assert accepted.status.value == "ACCEPT"
    result = run.join()

    assert result["outcome"] == "resolved", result
    assert api_image(world) == "registry.sandbox.local/acme/api:v1.5.0"
    assert http.get(f"{world.url}/services/api/health").status_code == 200
    rollback_runs = [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]
    assert len(rollback_runs) == 1 and rollback_runs[0]["conclusion"] == "success"
    inputs = dict(rollback_runs[0]["inputs"])
    assert inputs.pop("dispatch_id") in rollback_runs[0]["display_title"], "the run shows whose dispatch it is"
    assert inputs == {"environment": "sandbox", "to_revision": "2",
                      "to_image": "registry.sandbox.local/acme/api:v1.5.0"}

    issue = world.github.repo("acme/incidents").issues[0]
    assert issue["state"] == "closed"
    assert [label["name"] for label in issue["labels"]] == ["incident", "P0", "priority:high", "area:infra"]
    assert "## 🚨 Incident Report" in issue["body"] and "**Severity:** P0" in issue["body"]
    # the body tells what the store knows, rewritten in place as the incident moved on
    assert "**Status:** Resolved" in issue["body"] and "**Resolved:** " in issue["body"], issue["body"]
    assert "- **Duration:** ongoing" not in issue["body"] and "**Commander:** @" in issue["body"]
    assert "- [x] " in issue["body"] and "A bad deployment" in issue["body"], issue["body"]
    comments = [c["body"] for c in world.github.repo("acme/incidents").comments[issue["number"]]]
    assert any(c.startswith("## Diagnosis") and "CrashLoopBackOff" in c for c in comments)
    assert any("Incident resolved" in c and "Root Cause" in c for c in comments)

    texts = _texts(world)
    # one Slack thread: the Initial Alert is its parent, kept current (now resolved), and every
    # later message is a reply in it
    parent, *replies = world.slack_messages
    assert texts[0].startswith("🚨 INCIDENT ALERT\nSeverity: P0\nService: api\nIssue: #1\nStatus: ✅ Resolved")
    assert parent["thread_ts"] is None and parent.get("edited")
    assert replies and all(m["thread_ts"] == parent["ts"] and m["channel"] == parent["channel"] for m in replies)
    assert "<@U0SANDOLA> <!subteam^S0SANDONCALL>" in texts[0] and "Incident Commander: <@U0SANDSAM>" in texts[0]
    assert any(t.startswith("✅ INCIDENT RESOLVED\nIssue: #1\nRoot Cause: A bad deployment") for t in texts)

    incident = store.get(result["incident_id"])
    assert incident.status.value == "Resolved" and incident.resolved_at is not None
    kinds = [e.kind for e in store.timeline(incident.id)]
    for kind in ("detected", "issue_opened", "investigating", "diagnosed", "approval_requested",
                 "approval_approved", "action", "recovered", "resolved"):
        assert kind in kinds, f"timeline lacks {kind}: {kinds}"
    approval = store.approvals(incident.id)[0]
    assert (approval.decision, approval.approver, approval.reason) == ("approved", "alice (unverified)", "v2 broke it")


def test_declined_plan_changes_nothing_and_escalates(world, store):
    from flows.service_down import service_down

    break_api(world)
    revision_before = world.cluster.get("deployments", "sandbox", "api")["metadata"]["annotations"]
    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    run.resume(paused.id, approve=False, approver="bob", reason="investigating by hand")
    result = run.join()

    assert result["outcome"] == "declined"
    assert api_image(world) == BROKEN_IMAGE
    assert world.cluster.get("deployments", "sandbox", "api")["metadata"]["annotations"] == revision_before
    assert not [r for r in world.github.repo("acme/api").runs if r["name"] == "rollback"]
    assert any(t.startswith("📊 INCIDENT UPDATE") and "ESCALATION (P0" in t and "bob" in t for t in _texts(world))
    timeline = store.timeline(result["incident_id"])
    declined = [e for e in timeline if e.kind == "approval_declined"]
    assert declined and declined[0].actor == "bob (unverified)" and "Nothing was changed" in declined[0].message
    assert world.github.repo("acme/incidents").issues[0]["state"] == "open"


def test_unanswered_approval_times_out_as_declined(world, store):
    from flows.service_down import service_down

    break_api(world)
    start = time.monotonic()
    result = FlowThread(service_down, service="api", environment="sandbox-short").join()
    assert result["outcome"] == "timed_out"
    assert time.monotonic() - start < 40
    assert api_image(world) == BROKEN_IMAGE
    assert any("ESCALATION" in t and "Nobody answered" in t for t in _texts(world))
    approval = store.approvals(result["incident_id"])[0]
    assert approval.decision == "timed_out"
    assert "approval_timed_out" in [e.kind for e in store.timeline(result["incident_id"])]


def test_dry_run_reports_the_plan_and_changes_nothing(world, store):
    from prefect.client.orchestration import get_client

    from flows.service_down import service_down

    break_api(world)
    result = FlowThread(service_down, service="api", dry_run=True).join(60)
    assert result["outcome"] == "dry_run"
    assert result["plan"] and "rollback" in result["plan"][0]
    assert api_image(world) == BROKEN_IMAGE
    assert not any(t.startswith("⏸️") for t in _texts(world)), "a dry run never asks for approval"
    with get_client(sync_client=True) as client:  # every page: the suite makes more than one read returns
        keys = {a.key for a in read_all(client.read_latest_artifacts)}
    assert f"incident-{result['incident_id']}-plan" in keys and f"incident-{result['incident_id']}-diagnosis" in keys
    assert store.approvals(result["incident_id"]) == []


def test_slack_down_does_not_stop_remediation(world, store):
    from flows.service_down import service_down
    from sandbox.http import Fault

    break_api(world)
    world.faults.set("slack", Fault(status=500))
    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    run.resume(paused.id, approve=True, approver="carol", reason="slack is down anyway")
    result = run.join()
    assert result["outcome"] == "resolved"
    assert api_image(world).endswith(":v1.5.0")
    assert world.slack_messages == []
    failures = [e for e in store.timeline(result["incident_id"]) if e.kind == "notification_failed"]
    assert failures and not any("sandbox-webhook-secret" in e.message for e in failures)


def test_unknown_service_fails_clearly_and_opens_nothing(world, store):
    from flows.service_down import service_down
    from incidents.config import ConfigError

    before = len(store.list(limit=1000))
    with pytest.raises(ConfigError, match="unknown service 'payments'.*api, frontend"):
        service_down(service="payments")
    assert len(store.list(limit=1000)) == before
    assert world.slack_messages == [] and world.github.repo("acme/incidents").issues == []


def test_kubernetes_undo_strategy_rolls_back_without_github(world):
    """frontend is configured with rollback_strategy kubernetes_undo."""
    from flows.service_down import service_down

    kubectl(world, "set", "image", "deployment/frontend", "frontend=registry.sandbox.local/acme/frontend:v4-broken")
    run = FlowThread(service_down, service="frontend", severity="P1")
    paused = run.wait_paused()
    run.resume(paused.id, approve=True, approver="dave", reason="bad frontend release")
    result = run.join()
    assert result["outcome"] == "resolved", result
    assert "kubectl rollout undo" in result["actions"][0]
    assert not [r for r in world.github.repo("acme/frontend").runs if r["name"] == "rollback"]
    image = kubectl(world, "get", "deployment/frontend", "-o", "jsonpath={.spec.template.spec.containers[0].image}")
    assert image.stdout == "registry.sandbox.local/acme/frontend:v3.2.0"
    issue = world.github.repo("acme/incidents").issues[0]
    assert [label["name"] for label in issue["labels"]] == ["incident", "P1", "priority:high", "area:infra"]
