"""The incident roles' duties on a controllable clock: the commander asked when approvers are
silent, the Communications lead's stakeholder update drafts on the severity's cadence, and the
24-hour summary drafted at resolution, reminded while overdue, marked sent, and measured."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from incidents.models import Severity
from incidents.plans import Plan
from incidents.success_metrics import MetricRow, compute
from integrations.github import GitHubClient
from sandbox.world import GITHUB_TOKEN
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("prefect_server")


def _open(store, severity: str, key: str):
    return store.open_incident(dedup_key=key, scenario="service-down", service="api", environment="sandbox",
                               severity=Severity(severity), title=f"[{severity}] api test", detected_by="test",
                               flow_run_id=None, alert=None)


def _messages(world, prefix: str) -> list[str]:
    return [m["text"] for m in world.slack_messages if m["text"].startswith(prefix)]


def test_the_commander_is_asked_once_when_no_approver_answers_within_the_response_time(world, store):
    from tasks.watch import sweep

    incident = _open(store, "P1", "duty-commander")
    plan = Plan(incident.id, "api", "sandbox", (), summary="roll back")
    approval_id = store.request_approval(incident.id, plan, None)
    requested = store.approval(approval_id).requested_at
    assert sweep("sandbox", now=requested + timedelta(minutes=14, seconds=59)).commander_asked == []
    store.assign_role(incident.id, "commander", "@comms-kim", "sam")  # handed over meanwhile: kim is asked
    assert sweep("sandbox", now=requested + timedelta(minutes=15)).commander_asked == [approval_id]
    assert sweep("sandbox", now=requested + timedelta(minutes=40)).commander_asked == [], "once per request"
    asked = _messages(world, "🧭 DECISION NEEDED")
    assert len(asked) == 1 and "Incident Commander: <@U0SANDKIM>" in asked[0], asked
    assert "Approvers: <@U0SANDSAM> <@U0SANDTESS>" in asked[0], "rita may not approve P1: not named"
    events = [e for e in store.timeline(incident.id) if e.kind == "commander_asked"]
    assert len(events) == 1 and events[0].data.commander == "@comms-kim"

    answered = _open(store, "P1", "duty-answered")
    signed_id = store.request_approval(answered.id, Plan(answered.id, "api", "sandbox", (), summary="scale"), None)
    store.sign(signed_id, "sam", "approve", "ok")  # one approver answered (four-eyes waits for another)
    later = store.approval(signed_id).requested_at + timedelta(hours=1)
    assert signed_id not in sweep("sandbox", now=later).commander_asked, "an approver spoke: not silent"


def test_stakeholder_drafts_follow_the_severity_s_cadence_for_the_comms_lead(world, store):
    from tasks.watch import sweep

    p0 = _open(store, "P0", "duty-stakeholders-p0")
    p2 = _open(store, "P2", "duty-stakeholders-p2")
    opened = p0.opened_at
    assert sweep("sandbox", now=opened + timedelta(minutes=29)).stakeholder_drafts == []
    assert sweep("sandbox", now=opened + timedelta(minutes=30, seconds=5)).stakeholder_drafts == [p0.id]
    assert sweep("sandbox", now=opened + timedelta(minutes=31)).stakeholder_drafts == []
    assert sweep("sandbox", now=opened + timedelta(minutes=61)).stakeholder_drafts == [p0.id]
    drafts = _messages(world, "📣 STAKEHOLDER UPDATE (draft)")
    assert len(drafts) == 2 and all("For: <@U0SANDKIM>" in d and "Critical priority" in d for d in drafts), drafts
    assert f"Next update by {opened + timedelta(minutes=60):%H:%M} UTC" in drafts[0]
    assert p2.id not in sweep("sandbox", now=opened + timedelta(hours=9)).stakeholder_drafts, "P2: no cadence"


def test_the_24_hour_summary_is_drafted_at_resolution_reminded_when_overdue_and_marked_sent(world, store):
    from tasks.context import RunContext
    from tasks.incident import resolve_incident
    from tasks.watch import sweep

    incident = _open(store, "P1", "duty-summary")
    with GitHubClient(world.url + "/github", GITHUB_TOKEN) as github:
        issue = github.create_issue("acme/incidents", incident.title, "## 🚨 Incident Report", ["incident", "P1"])
    store.attach_issue(incident.id, "acme/incidents", issue.number, issue.html_url)
    incident = store.get(incident.id)
    ctx = RunContext.load("sandbox", "api")
    assert resolve_incident.fn(ctx, incident, "a bad release", "rolled back to v1.5.0", "canary releases")
    drafted = _messages(world, "📋 24-HOUR SUMMARY (draft)")
    assert len(drafted) == 1 and "For: <@U0SANDKIM>" in drafted[0] and "Root cause: a bad release" in drafted[0]
    assert "Public statement (draft)" in drafted[0]
    comments = world.github.repo("acme/incidents").comments.get(issue.number, [])
    assert any("24-hour summary (draft)" in c["body"] for c in comments), comments
    resolved_at = store.get(incident.id).resolved_at

    assert incident.id not in sweep("sandbox", now=resolved_at + timedelta(hours=23)).summary_reminders
    assert incident.id in sweep("sandbox", now=resolved_at + timedelta(hours=24, seconds=1)).summary_reminders
    assert incident.id not in sweep("sandbox", now=resolved_at + timedelta(hours=25)).summary_reminders
    assert incident.id in sweep("sandbox", now=resolved_at + timedelta(hours=48, seconds=2)).summary_reminders
    overdue = _messages(world, "📋 24-HOUR SUMMARY OVERDUE")
    assert len([t for t in overdue if f"summary {incident.id} sent" in t]) == 2 and "<@U0SANDKIM>" in overdue[0]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deployments.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    sent = cli("summary", str(incident.id), "--by", "kim")
    assert sent.returncode == 0 and "24-hour summary sent by kim (on time)" in sent.stdout, (sent.stdout, sent.stderr)
    again = cli("summary", str(incident.id), "--by", "kim")
    assert again.returncode != 0 and "marked sent already (by kim)" in again.stderr
    assert incident.id not in sweep("sandbox", now=resolved_at + timedelta(hours=96)).summary_reminders
    body = world.github.repo("acme/incidents").issues[issue.number - 1]["body"]
    assert "24-hour summary sent by kim" in body, body
    never = _open(store, "P2", "duty-no-summary")
    refused = cli("summary", str(never.id), "--by", "kim")
    assert refused.returncode != 0 and "no 24-hour summary drafted" in refused.stderr


def test_summaries_on_time_are_measured_and_a_declared_incident_has_no_detection_time():
    now = datetime(2026, 12, 6, 12, tzinfo=timezone.utc)
    start = now - timedelta(days=3)

    def row(n: int, detected_by: str = "alert", due: datetime | None = None, sent: datetime | None = None):
        return MetricRow(id=n, severity="P1", detected_by=detected_by, from_alert=detected_by == "alert", drill=False,
                         started_at=start, opened_at=start + timedelta(minutes=2), acknowledged_at=None,
                         recovered_at=None, resolved_at=start + timedelta(hours=1), postmortem_at=None,
                         summary_due=due, summary_at=sent)

    day = start + timedelta(hours=25)
    rows = [row(1, due=day, sent=day - timedelta(hours=1)), row(2, due=day, sent=day + timedelta(hours=2)),
            row(3, due=day), row(4, due=now + timedelta(hours=5)), row(5, "slack")]
    metrics = compute(rows, now, {"P1": 15.0})
    summaries = metrics.figure("24-hour summaries sent on time", "all")
    assert (summaries.value, summaries.counted, summaries.left_out, summaries.met) == (33.3, 3, 1, False)
    mttd = metrics.figure("MTTD", "all")
    assert (mttd.counted, mttd.left_out) == (4, 1), "a declared incident is left out of MTTD"
