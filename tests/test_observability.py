"""The product watching itself, through the production-shaped stack (tests/stack.py): a run's
lifecycle events fire a Prefect Automation, the workers' /metrics count the run, and the
shipped self-alert rules page PagerDuty when a worker stops (through a real Prometheus and
Alertmanager, never through the runbooks' own intake)."""

from __future__ import annotations

import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import RULES_FILE, SELF_PAGER, self_alert_routing
from incidents.models import EventKind
from integrations import http
from sandbox.pagerduty import routing_key
from tests.conftest import break_api, start_daemon
from tests.test_scale_out import _run, _until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(port: int) -> Samples:
    text = http.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _summed(stack) -> Samples:
    """Every running worker's metrics, summed (a run and its resumption may run on different workers)."""
    total: Samples = {}
    for name in stack.workers():
        for key, value in _scrape(stack.metrics_ports[name]).items():
            total[key] = total.get(key, 0.0) + value
    return total


def _grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def _wait(predicate, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s")


def _automation(api: str, block_id: str, severity: str) -> str:
    body = {"name": f"approval requested for {severity}", "enabled": True,
            "trigger": {"type": "event", "posture": "Reactive", "threshold": 1, "within": 0,
                        "expect": ["runbooks.approval.requested"],
                        "match": {"prefect.resource.id": "runbooks.approval.*", "runbooks.severity": severity}},
            "actions": [{"type": "send-notification", "block_document_id": block_id,
                         "subject": f"AUTOMATION {severity}",
                         "body": "approval needed for incident {{ event.resource['runbooks.incident'] }} "
                                 "({{ event.resource['runbooks.service'] }})"}]}
    answer = http.post(f"{api}/automations/", json=body, timeout=10)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


@pytest.fixture
def automations(pg_stack, world):
    """A custom-webhook block to the sandbox's Slack, and the two Automations on it: "approval
    requested for P0" and "... for P3". Deleted afterwards: the stack is shared, and later tests'
    P0 runs must not post into their Slack."""
    api = pg_stack.api
    block_id = _notification_block(api, world.slack_webhook_url)
    made = [_automation(api, block_id, severity) for severity in ("P0", "P3")]
    yield made
    for automation_id in made:
        http.delete(f"{api}/automations/{automation_id}", timeout=10)
    http.delete(f"{api}/block_documents/{block_id}", timeout=10)


def _notification_block(api: str, slack_url: str) -> str:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        block = CustomWebhookNotificationBlock(name="sandbox-slack", url=slack_url,
                                               json_data={"text": "{{subject}}: {{body}}"})
        return str(block.save(f"sandbox-slack-{uuid.uuid4().hex[:8]}"))


def _runbooks_events(api: str, incident_id: int) -> list[dict]:
    body = {"filter": {"event": {"prefix": ["runbooks."]},
                       "any_resource": {"id": [f"runbooks.incident.{incident_id}"]},
                       "order": "ASC"}, "limit": 50}
    return http.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]


def test_a_run_is_counted_and_its_events_fire_an_automation(pg_stack, world, store, automations):
    api = pg_stack.api
    before = _summed(pg_stack)
    break_api(world)

    run_id = _run(api, {"service": "api", "environment": "sandbox", "severity": "P0"})
    assert _until(api, run_id, ("PAUSED", "FAILED", "CRASHED")) == "PAUSED"
    incident_id = store.approval_for_run(run_id).incident_id

    def automation_messages() -> list[str]:
        return [m["text"] for m in world.slack_messages if m["text"].startswith("AUTOMATION")]

    fired = _wait(automation_messages, 60, "the P0 Automation did not fire")
    assert fired == [f"AUTOMATION P0: approval needed for incident {incident_id} (api)"], fired

    answer = http.post(f"{api}/flow_runs/{run_id}/resume", timeout=5, json={
        "run_input": {"approve": True, "approver": "quinn", "reason": "observability test"}}).json()
    assert answer["status"] == "ACCEPT", answer
    assert _until(api, run_id, ("COMPLETED", "FAILED", "CRASHED")) == "COMPLETED"
    assert automation_messages() == fired  # once, and never the P3 one

    # the resolved P0 starts its post-incident run, which suspends on its form: a third process
    post_runs = [e.data.flow_run_id for e in store.timeline(incident_id) if e.kind == EventKind.POSTMORTEM_STARTED]
    assert len(post_runs) == 1, post_runs
    try:
        assert _until(api, post_runs[0], ("PAUSED", "FAILED", "CRASHED")) == "PAUSED"
        # the worker counts a run's exit once it has reaped the process: give it the time a loaded machine takes
        after = _wait(lambda: (s := _summed(pg_stack)) and _grew(before, s, "runbooks_worker_runs_total", exit="ok")
                      >= 3 and s, 15, "the workers did not count the three processes")
    finally:  # the stack is shared: no form left waiting
        http.post(f"{api}/flow_runs/{post_runs[0]}/set_state", timeout=5, json={
            "force": True, "state": {"type": "CANCELLED", "name": "Cancelled", "message": "test done"}})
    # suspended, resumed, and the post-incident run suspended on its form
    assert _grew(before, after, "runbooks_worker_runs_total", exit="ok") == 3
    assert _grew(before, after, "runbooks_runs_started_total", scenario="service-down") == 2
    assert _grew(before, after, "runbooks_runs_finished_total", scenario="service-down", outcome="resolved") == 1
    assert _grew(before, after, "runbooks_actions_total", kind="rollback", result="succeeded") == 1
    assert _grew(before, after, "runbooks_approvals_decided_total", decision="approved") == 1
    assert _grew(before, after, "runbooks_approve_to_action_seconds_count", kind="rollback") == 1
    assert _grew(before, after, "runbooks_time_to_plan_seconds_count", scenario="service-down") == 1

    expected = ["runbooks.incident.opened", "runbooks.approval.requested", "runbooks.approval.decided",
                "runbooks.action.started", "runbooks.action.succeeded", "runbooks.incident.resolved"]
    events = _wait(lambda: (e := _runbooks_events(api, incident_id)) and len(e) >= len(expected) and e, 30,
                   "the run's events were not all stored")
    assert [e["event"] for e in events] == expected, [e["event"] for e in events]
    for event in events:
        assert event["resource"]["runbooks.severity"] == "P0"
        roles = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in event["related"]}
        assert roles["incident"] == f"runbooks.incident.{incident_id}" and roles["severity"] == "runbooks.severity.P0"
        assert roles["flow-run"] == f"prefect.flow-run.{run_id}", roles


def _rules_with_for(tmp: Path, alert: str, duration: str) -> Path:
    """The shipped rules, with one alert's `for` shortened for the test."""
    text = RULES_FILE.read_text()
    block = re.search(rf"- alert: {alert}\n(?:.*\n)*?\s+for: \S+", text)
    assert block, f"{alert} not in {RULES_FILE.name}"
    path = tmp / "rules.yml"
    path.write_text(text.replace(block.group(0), re.sub(r"for: \S+$", f"for: {duration}", block.group(0))))
    return path


def _self_pages(world) -> list[dict]:
    return [e for e in world.pagerduty.events if e["routing_key"] == routing_key(SELF_PAGER)]


def _triggers(world) -> list[dict]:
    return [e for e in _self_pages(world) if e.get("event_action") == "trigger"]


def test_a_stopped_worker_pages_pagerduty_within_the_rules_for(pg_stack, world, tmp_path):
    checked = subprocess.run(["promtool", "check", "rules", str(RULES_FILE)], capture_output=True, text=True,
                             timeout=30)
    assert checked.returncode == 0 and "7 rules found" in checked.stdout, checked.stdout + checked.stderr
    pg_stack.start_workers("worker-watched")
    port = pg_stack.metrics_ports["worker-watched"]
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(self_alert_routing(world.url, group_wait="1s"))
    alertmanager, am_url = start_daemon("prometheus-alertmanager", [
        f"--config.file={am_config}", f"--storage.path={tmp_path / 'am'}", "--cluster.listen-address="],
        "prometheus-alertmanager")
    rules = _rules_with_for(tmp_path, "RunbooksWorkerDown", "5s")
    config = tmp_path / "prometheus.yml"
    # scraped every 2 s with up to 1.9 s to answer: on a machine busy with other test lanes the
    # worker's /metrics has answered in more than 0.9 s, and a live worker must page nobody
    config.write_text(f"""global: {{scrape_interval: 2s, evaluation_interval: 1s}}
rule_files: ["{rules}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["{am_url.removeprefix('http://')}"]}}]}}]
scrape_configs:
  - job_name: runbooks-worker
    scrape_timeout: 1900ms
    static_configs: [{{targets: ["127.0.0.1:{port}"]}}]
""")
    prometheus, prom_url = start_daemon("prometheus", [f"--config.file={config}",
                                                       f"--storage.tsdb.path={tmp_path / 'prom'}"], "prometheus")
    try:
        def up() -> list:
            answer = http.get(f"{prom_url}/api/v1/query", params={"query": 'up{job="runbooks-worker"} == 1'},
                              timeout=5).json()
            return answer["data"]["result"]

        _wait(up, 30, "Prometheus did not scrape the worker")
        # With `for` cut to 5 s, the rule's absent() can fire before Prometheus's first scrape on a
        # loaded machine (with the shipped 1m it cannot); such a page is delivered within the
        # group wait and is not what this test is about. From here on the worker is up.
        time.sleep(3)
        before = len(_triggers(world))
        time.sleep(7)  # longer than the rule's `for`: a worker that is up pages nobody
        assert _triggers(world)[before:] == []
        pg_stack.kill("worker-watched")
        killed = time.monotonic()
        pages = _wait(lambda: _triggers(world)[before:], 40, "no page reached PagerDuty")
        took = time.monotonic() - killed
        summary = pages[0]["payload"]["summary"]
        assert "RunbooksWorkerDown" in summary and f"127.0.0.1:{port}" in summary, summary
        assert pages[0]["event_action"] == "trigger" and pages[0]["payload"]["severity"] == "critical"
        # for (5 s) + a scrape (2 s) + an evaluation (1 s) + the group wait (1 s), and room for a loaded machine
        assert took < 5 + 20, f"paged {took:.1f} s after the worker stopped"
    finally:
        if "worker-watched" in pg_stack.processes:  # a failure above must not leave it claiming later tests' runs
            pg_stack.kill("worker-watched")
        for process in (prometheus, alertmanager):
            process.terminate()
            process.wait(10)
