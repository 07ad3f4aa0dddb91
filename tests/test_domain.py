"""Templates, escaping, config validation, plans and grants, patches, Prometheus parsing."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest

from incidents import templates
from incidents.config import ConfigError, EscalationMatrix, Roles, load_config
from incidents.models import Incident, Severity, Status
from incidents.plans import Grant, NotApproved, Plan, PlannedAction, require_grant
from integrations.probes import error_metrics, parse_prometheus
from sandbox.patch import PatchError, apply_patch


def incident(**kw) -> Incident:
    base: dict[str, Any] = dict(id=7, dedup_key="k", scenario="service-down", service="api", environment="sandbox",
                severity=Severity.P0, status=Status.INVESTIGATING, title="t",
                opened_at=datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc), github_issue=42)
    base.update(kw)
    return Incident(**base)


def test_initial_alert_follows_the_playbook_template():
    text = templates.initial_alert(incident(), "api is down", eta="15 min", paged=["@a", "@b"], commander="@ic")
    assert text.splitlines()[:6] == ["🚨 INCIDENT ALERT", "Severity: P0", "Service: api", "Issue: #42",
                                     "Status: Investigating", "ETA: 15 min"]
    assert text.splitlines()[-2:] == ["Incident Commander: @ic", "Paging: @a @b"]


def test_status_update_and_resolution_templates():
    update = templates.status_update(incident(), "Identified", "30 min", "Checkout unavailable")
    assert update.splitlines() == ["📊 INCIDENT UPDATE", "Issue: #42", "Status: Identified", "ETA: 30 min",
                                   "Impact: Checkout unavailable"]
    resolved = templates.resolution(incident(), "bad deploy", "rolled back", "canary")
    assert resolved.splitlines() == ["✅ INCIDENT RESOLVED", "Issue: #42", "Root Cause: bad deploy",
                                     "Resolution: rolled back", "Prevention: canary"]


@pytest.mark.parametrize("hostile", ["<!channel> wake up", "@channel deploy now", "@HERE", "<!everyone|x>",
                                     "hi @everyone", "<https://evil.example|click>"])
def test_alert_text_cannot_mention_a_channel_in_slack(hostile):
    text = templates.initial_alert(incident(), hostile)
    summary = next(line for line in text.splitlines() if line.startswith("Summary:"))
    assert "<!" not in summary and "<http" not in summary
    for word in ("@channel", "@here", "@everyone"):
        assert word not in summary.lower()


def test_alert_text_cannot_inject_markdown_or_mentions_into_github():
    hostile = "## Pwned [click](https://evil.example) @octocat <img src=x> `code` #1\n- [x] done"
    body = templates.issue_body(incident(alert={"labels": {"alertname": "@team **x**"}}), hostile, Roles().table(),
                                EscalationMatrix().P0)
    summary = next(line for line in body.splitlines() if line.startswith("**Summary:**"))
    assert re.search(r"(?<!\\)[\[\]()`#]", summary.split("**Summary:**")[1]) is None, summary
    assert "<img" not in summary and "&lt;img src=x&gt;" in summary
    assert "@octocat" not in summary and "@\u200boctocat" in summary
    assert "\\#1" in summary and "\\`code\\`" in summary
    assert "@\u200bteam" in body and "| On Call | @mpcstudy | @mpcstudy |" in body


def test_issue_body_has_the_playbook_sections():
    body = templates.issue_body(
        incident(), "api is down", Roles(incident_commander="@ic").table(), EscalationMatrix().P0
    )
    assert "| Incident Commander | @ic | - |" in body and "acknowledge within 5 min" in body
    for heading in ("## 🚨 Incident Report", "**Severity:** P0", "**Start Time:** 2026-11-26 03:00:00 UTC",
                    "### 📊 Impact", "### Timeline", "### Actions Taken", "### Root Cause", "### Lessons Learned",
                    "### 🚀 Action Items"):
        assert heading in body


def test_the_issue_body_is_rewritten_from_the_record_as_the_incident_moves_on():
    from datetime import timedelta

    from incidents import timeline_payloads as payloads
    from incidents.models import EventKind, Severity, TimelineEvent

    opened = datetime(2026, 11, 26, 3, 0, tzinfo=timezone.utc)
    issue = payloads.IssueOpened(url="https://github.test/acme/incidents/issues/1")
    events = [TimelineEvent(opened, "runbook", EventKind.DETECTED, "service-down: api is down", payloads.AlertSeen()),
              TimelineEvent(opened, "runbook", EventKind.ISSUE_OPENED, "GitHub issue opened", issue),
              TimelineEvent(opened + timedelta(minutes=2), "alice", EventKind.APPROVAL_APPROVED, "Approved by alice",
                            payloads.ApprovalStep(plan_digest="d")),
              TimelineEvent(opened + timedelta(minutes=3), "runbook", EventKind.ACTION, "rollback: revision 3 -> 2",
                            payloads.ActionTaken(changed=True)),
              TimelineEvent(opened + timedelta(minutes=4), "am", EventKind.JOINED, "ServiceDown also fires; severity "
                            "raised from P1 to P0", payloads.AlertJoined(seen="new", raised_from=Severity.P1)),
              TimelineEvent(opened + timedelta(minutes=5), "am", EventKind.JOINED, "a replica's copy",
                            payloads.AlertJoined(seen="repeat"))]
    moments = templates.key_moments(events)
    assert [kind for _, kind, _ in moments] == ["detected", "approval_approved", "action", "joined"]
    roles = Roles(incident_commander="@ic").table()
    open_body = templates.issue_body(incident(), "api is down", roles, EscalationMatrix().P0, moments=moments,
                                     now=opened + timedelta(minutes=12))
    assert "**Status:** Investigating" in open_body and "- **Duration:** ongoing (12 min so far)" in open_body
    assert "**Commander:** @ic" in open_body and "- [x] rollback: revision 3 -&gt; 2" in open_body  # Markdown-safe
    assert "severity raised from P1 to P0" in open_body and "a replica's copy" not in open_body
    done = incident(status=Status.RESOLVED, resolved_at=opened + timedelta(minutes=75), root_cause="v2 broke it")
    body = templates.issue_body(done, "api is down", roles, EscalationMatrix().P0, moments=moments)
    assert "**Status:** Resolved\n**Resolved:** 2026-11-26 04:15:00 UTC" in body and "- **Duration:** 1h15m" in body
    assert "### Root Cause\nv2 broke it" in body
    assert templates.summary_of("[P1] api: error rate 40%: above 5%") == "error rate 40%: above 5%"


def test_severity_labels_and_matrix():
    assert Severity.P0.labels == ["incident", "P0", "priority:high", "area:infra"]
    assert Severity.P2.labels == ["incident", "P2", "area:infra"]
    assert Severity.P1.response_time.total_seconds() == 15 * 60
    assert Severity.P3.escalation == "Create issue, normal process"


def test_a_broken_config_names_file_field_and_reason(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("""
environments:
  sandbox:
    github: {token_secret: ghp_realtoken123, incident_repo: acme/incidents}
    slack: {webhook_secret: slack-webhook-url}
    services:
      api:
        base_url: ftp://nope
        kubernetes: {namespace: Sandbox, deployment: api, container: api}
        github: {repo: acme/api}
        scaling: {min_replicas: 5, max_replicas: 2}
""")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "environments.sandbox.github.token_secret" in message and "not the secret itself" in message
    assert "environments.sandbox.services.api.base_url" in message
    assert "environments.sandbox.services.api.kubernetes.namespace" in message
    assert "min_replicas (5) is above max_replicas (2)" in message


def test_config_errors_for_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("environments: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_shipped_configs_are_valid():
    from incidents.config import PROJECT_ROOT

    assert set(load_config(PROJECT_ROOT / "config" / "sandbox.yaml").environments) == {"sandbox"}
    prod = load_config(PROJECT_ROOT / "config" / "example-production.yaml").environments
    assert prod["production"].production and not prod["production"].drills_allowed


def _plan(after: str = "revision 2") -> Plan:
    action = PlannedAction("rollback", "deployment/api", "revision 3", after, "kubectl rollout undo",
                           {"namespace": "sandbox", "deployment": "api", "strategy": "kubernetes_undo",
                            "from_revision": 3, "to_revision": 2, "to_image": "acme/api:v1.4.1"})
    return Plan(1, "api", "sandbox", (action,), ("health: down",), "roll back")


def test_grants_cover_exactly_the_approved_plan():
    plan = _plan()
    grant = Grant.issue(plan, "alice", "ok")
    assert require_grant(grant, plan.actions[0]) is grant
    with pytest.raises(NotApproved, match="no approval grant"):
        require_grant(None, plan.actions[0])
    with pytest.raises(NotApproved, match="does not contain this action"):
        require_grant(grant, _plan(after="revision 1").actions[0])
    forged = Grant(grant.plan_digest, grant.action_digests, "mallory", "ok", False, grant.granted_at, grant.signature)
    with pytest.raises(NotApproved, match="not genuine"):
        require_grant(forged, plan.actions[0])


def test_plan_markdown_shows_every_action_with_before_and_after():
    text = _plan().markdown(timeout_seconds=900)
    assert "| 1 | **rollback** | `deployment/api` | revision 3 → revision 2 | kubectl rollout undo |" in text
    assert "health: down" in text and "15 min counts as declined" in text


def test_patches_as_the_api_server_applies_them():
    dep = {"spec": {"replicas": 3, "template": {"spec": {"containers": [
        {"name": "api", "image": "a:1", "env": [{"name": "X", "value": "1"}]}, {"name": "side", "image": "s:1"}]}}}}
    smp = apply_patch(dep, {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "api"}],
                                                          "containers": [{"name": "api", "image": "a:2"}]}}}},
                      "application/strategic-merge-patch+json")
    containers = smp["spec"]["template"]["spec"]["containers"]
    assert containers[0] == {"name": "api", "image": "a:2", "env": [{"name": "X", "value": "1"}]}
    assert containers[1]["image"] == "s:1"
    merged = apply_patch(dep, {"spec": {"replicas": 5, "template": None}}, "application/merge-patch+json")
    assert merged == {"spec": {"replicas": 5}}
    jp = apply_patch(dep, [{"op": "replace", "path": "/spec/replicas", "value": 1}], "application/json-patch+json")
    assert jp["spec"]["replicas"] == 1
    with pytest.raises(PatchError):
        apply_patch(dep, [{"op": "replace", "path": "/spec/nope/x", "value": 1}], "application/json-patch+json")


def test_error_metrics_from_json_and_prometheus_text():
    assert error_metrics({"errors": 5, "requests": 100}).error_rate == 0.05
    text = ('# TYPE http_requests_total counter\nhttp_requests_total{service="api",code="200"} 90\n'
            'http_requests_total{service="api",code="503"} 10\nup 1\n')
    assert parse_prometheus(text)[0] == ("http_requests_total", {"service": "api", "code": "200"}, 90.0)
    assert error_metrics(text).error_rate == 0.1
    assert error_metrics("no metrics here") is None


def test_errors_on_templated_routes_are_counted():
    """Label values may hold `}` (templated routes): every sample counts, none is dropped."""
    text = ('# TYPE http_requests_total counter\n'
            'http_requests_total{code="200",path="/orders/{id}"} 93\n'
            'http_requests_total{code="500",path="/orders/{id}"} 7\n'
            'http_requests_total{code="503",path="/users/{user}/cart/{item}",version="v2"} 5\n'
            'http_requests_total{code="200",path="/health"} 95\n')
    metrics = error_metrics(text)
    assert (metrics.requests, metrics.errors) == (200.0, 12.0)
    assert metrics.by_version == {"v2": (5.0, 5.0)}
    assert ("http_requests_total", {"code": "500", "path": "/orders/{id}"}, 7.0) in parse_prometheus(text)


def test_prefilled_forms_keep_their_rules_and_help_text():
    """Prefect's with_initial_data replaces the fields it fills (rules and help text gone);
    the gates' forms keep theirs."""
    from tasks.approval import ApprovalInput
    from tasks.forms import prefilled
    from tasks.postmortem import PostmortemInput

    approval = prefilled(ApprovalInput, "the plan").model_json_schema()
    assert approval["required"] == ["approver"] and approval["properties"]["approve"]["description"].startswith("On:")
    assert prefilled(ApprovalInput, "the plan")._description == "the plan"
    postmortem = prefilled(PostmortemInput, "d", root_cause="a bad image").model_json_schema()
    assert postmortem["required"] == ["completed_by"]
    assert postmortem["properties"]["root_cause"] | {"default": None} == \
        PostmortemInput.model_json_schema()["properties"]["root_cause"] | {"default": None}
    assert postmortem["properties"]["root_cause"]["default"] == "a bad image"
    assert prefilled(PostmortemInput, "d").model_json_schema()["required"] == ["completed_by", "root_cause"]


def test_the_same_config_text_is_parsed_once_and_an_edit_or_a_changed_variable_is_seen_at_once(tmp_path,
                                                                                                   monkeypatch):
    from incidents.config import PROJECT_ROOT

    path = tmp_path / "runbooks.yaml"
    text = (PROJECT_ROOT / "config" / "sandbox.yaml").read_text()
    path.write_text(text)
    monkeypatch.setenv("RUNBOOKS_SANDBOX_APP_ROLE", "app_one")
    first = load_config(path)
    assert load_config(path) is first  # parsed once
    role = first.environments["sandbox"].services["api"].database.app_role
    assert role == "app_one"
    monkeypatch.setenv("RUNBOOKS_SANDBOX_APP_ROLE", "app_two")
    assert load_config(path).environments["sandbox"].services["api"].database.app_role == "app_two"
    path.write_text(text.replace("environments:", "environments:  # edited", 1).replace("sandbox:", "drill:", 1))
    assert set(load_config(path).environments) == {"drill"}
    path.write_text("environments: [unclosed")
    for _ in range(2):  # a broken file fails every time, never served from what was parsed before
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(path)


def _approval_row(findings: Any) -> dict[str, Any]:
    """An approvals row as the store reads it (its JSON columns still JSON)."""
    plan = Plan(7, "api", "sandbox", (), summary="roll back")
    return {"id": 3, "incident_id": 7, "plan_digest": plan.digest, "plan": plan.to_dict(), "flow_run_id": "run-1",
            "requested_at": datetime(2026, 12, 1, tzinfo=timezone.utc), "findings": findings}


def test_an_approvals_stored_diagnosis_reads_back_as_findings():
    from incidents.check_facts import ROLLOUT
    from incidents.findings import findings_record, unavailable
    from incidents.models import Approval

    seen = {ROLLOUT: unavailable(ROLLOUT, "Kubernetes API timed out")}
    approval = Approval.from_row(_approval_row(findings_record(seen)))
    assert approval.findings == seen and approval.unreadable_findings is None


@pytest.mark.parametrize("stored", [
    {"a check this version no longer has": {"check": "a check this version no longer has", "ok": False,
                                            "summary": "s", "details": [], "data": {}, "log": None}},
    {"rollout and pods": {"check": "rollout and pods", "ok": False, "summary": "s", "details": [],
                          "data": {"a fact this version no longer has": 1}, "log": None}},
    {"rollout and pods": "not a finding"},
])
def test_a_stored_diagnosis_that_no_longer_reads_back_spoils_only_the_findings(stored):
    """Every reader of the approval (its page, Slack, the watch, the post-mortem) still gets the
    row; the findings are None and say why, and only a resume, which needs them, stops on it."""
    from incidents.models import Approval

    approval = Approval.from_row(_approval_row(stored))
    assert approval.findings is None and approval.unreadable_findings
    assert approval.plan.summary == "roll back"


def _containment_row(params: Any) -> dict[str, Any]:
    at = datetime(2026, 12, 1, tzinfo=timezone.utc)
    return {"id": 4, "incident_id": 7, "environment": "sandbox", "service": "api", "kind": "block_ips",
            "target": "networkpolicy/block-suspicious-ips (namespace sandbox)", "params": params, "applied_at": at,
            "expires_at": at, "status": "active"}


def test_a_standing_blocks_params_read_back_as_its_model():
    from incidents.action_params import NetworkPolicyBlock
    from incidents.containment import StandingContainment

    standing = StandingContainment.from_row(_containment_row({
        "strategy": "network_policy", "namespace": "sandbox", "cidrs": ["203.0.113.7/32"],
        "policy": "block-suspicious-ips", "app": "api"}))
    assert isinstance(standing.params, NetworkPolicyBlock) and standing.unreadable_params is None
    assert standing.describe().startswith("block of 203.0.113.7/32 via networkpolicy/")


@pytest.mark.parametrize("stored", [
    {"strategy": "network_policy", "namespace": "sandbox", "cidrs": ["203.0.113.7/32"], "policy": "p", "app": "api",
     "a field this version no longer has": 1},
    {"strategy": "a strategy this version no longer has", "namespace": "sandbox", "cidrs": []},
    ["not", "params"],
])
def test_a_standing_containment_whose_params_no_longer_read_back_is_still_listed_and_says_so(stored):
    """The list, the watch and `runbooks containment lift` still get the row: a block that
    stands must never drop out of sight because its record is older than the code."""
    from incidents.containment import StandingContainment

    standing = StandingContainment.from_row(_containment_row(stored))
    assert standing.params is None and standing.unreadable_params
    assert "do not read back" in standing.describe() and standing.active
