"""One outage, one incident, and an honest lifecycle: every way a run can end leaves its
incident in the state a person would choose; one runbook acts on a service at a time; the
action claims belong to their incident; a stale incident is never joined."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from incidents.alerts import AlertParameter
from incidents.plans import Plan
from tests.conftest import BROKEN_IMAGE, FlowThread, api_image, break_api, ended

pytestmark = pytest.mark.usefixtures("prefect_server")


def _texts(world) -> list[str]:
    return [m["text"] for m in world.slack_messages]


def _kinds(store, incident_id: int) -> list[str]:
    return [e.kind for e in store.timeline(incident_id)]


def test_a_dry_run_pages_nobody_and_leaves_nothing_open(world, store):
    from flows.service_down import service_down
    from incidents.followups import FollowUpStore

    break_api(world)
    result = ended(service_down(service="api", dry_run=True))
    assert result["outcome"] == "dry_run" and any("rollback" in p for p in result["plan"])
    record = store.get(result["incident_id"])
    assert record.resolved_at is not None and record.detected_by == "dry run" and record.github_issue is None
    assert _texts(world) == [], "a dry run posts nothing: no Initial Alert, no page"
    assert record.id not in [i.id for i in store.list(open_only=True)]
    assert record.id not in [r.id for r in FollowUpStore().metric_rows("sandbox")], "not counted by the metrics"
    assert api_image(world) == BROKEN_IMAGE


def test_nothing_wrong_on_arrival_is_resolved_as_no_impact_after_confirming(world, store):
    from flows.service_down import service_down

    result = ended(service_down(service="api"))
    assert result["outcome"] == "no_impact", result
    incident = store.get(result["incident_id"])
    assert incident.resolved_at is not None and incident.root_cause.startswith("No impact found")
    kinds = _kinds(store, incident.id)
    assert kinds.index("confirming") < kinds.index("resolved")
    resolution = [t for t in _texts(world) if t.startswith("✅ INCIDENT RESOLVED")]
    assert len(resolution) == 1 and "No impact found" in resolution[0]
    issue = world.github.repo("acme/incidents").issues[-1]
    assert issue["number"] == incident.github_issue and issue["state"] == "closed"


@pytest.mark.parametrize("answer", ["declined", "timed_out"])
def test_declined_or_timed_out_stays_open(world, store, answer):
    from flows.service_down import service_down

    break_api(world)
    environment = "sandbox" if answer == "declined" else "sandbox-short"
    run = FlowThread(service_down, service="api", environment=environment)
    paused = run.wait_paused()
    if answer == "declined":
        # a person's decline whose reason reads like the intake's is still a decline
        run.resume(paused.id, approve=False, approver="dana", reason="alert resolved and stayed resolved")
    result = run.join()
    assert result["outcome"] == answer, result
    incident = store.get(result["incident_id"])
    assert incident.resolved_at is None and "escalated" in _kinds(store, incident.id)
    assert store.leases() == [], "the run gave the service back"


@pytest.fixture
def resolve_deployment(prefect_server, monkeypatch):
    """`resolve-incident/sandbox` on the test server, its runs executed here as a worker would."""
    import threading
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Pending

    from flows.resolve_incident import resolve_incident

    with get_client(sync_client=True) as client:
        dep_id = client.create_deployment(flow_id=client.create_flow(resolve_incident), name="sandbox",
                                          entrypoint="flows/resolve_incident.py:resolve_incident")
    stop = threading.Event()

    def loop() -> None:
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                for run in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
                ):
                    if (
                        run.state.is_scheduled()
                        and client.set_flow_run_state(run.id, Pending()).status.value == "ACCEPT"
                    ):
                        run_flow(resolve_incident, flow_run=run, parameters=run.parameters)
                time.sleep(0.2)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())  # the CLI talks to this server
    yield dep_id
    stop.set()
    worker.join(30)


def test_resolved_by_hand_closes_the_issue_and_stops_the_waiting_runbook(world, store, capsys, resolve_deployment):
    from deployments.cli import main
    from flows.service_down import service_down

    break_api(world)
    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    incident = store.incident_for_run(str(paused.id))
    with pytest.raises(SystemExit):  # --by and --note are required
        main(["resolve", str(incident.id), "--by", "rita"])
    assert main(["resolve", str(incident.id), "--by", "rita", "--note", "rolled back by hand"]) == 0
    assert "resolved by rita" in capsys.readouterr().out
    result = run.join()
    assert result["outcome"] == "resolved_elsewhere", result
    closed = store.get(incident.id)
    assert closed.resolved_at is not None and closed.resolution == "rolled back by hand"
    assert api_image(world) == BROKEN_IMAGE, "the runbook's plan did not run after the incident was resolved"
    issue = [i for i in world.github.repo("acme/incidents").issues if i["number"] == incident.github_issue][0]
    assert issue["state"] == "closed"
    assert sum(t.startswith("✅ INCIDENT RESOLVED") for t in _texts(world)) == 1
    assert main(["resolve", str(incident.id), "--by", "rita", "--note", "again"]) == 1  # already resolved: says so
    assert store.leases() == []


def test_a_second_scenario_on_a_held_service_contributes_its_findings(world, store):
    from flows.high_error_rate import high_error_rate
    from flows.service_down import service_down
    from tasks.cancellation import note_cancellation

    break_api(world)
    first = FlowThread(service_down, service="api")
    paused = first.wait_paused()
    incident = store.incident_for_run(str(paused.id))
    assert [lease.flow_run_id for lease in store.leases()] == [str(paused.id)]
    second = ended(high_error_rate(service="api"))
    assert second["outcome"] == "joined" and second["incident_id"] == incident.id and second["plan"] == []
    assert second["held_by"] == str(paused.id)
    kinds = _kinds(store, incident.id)
    assert "joined" in kinds and "findings_added" in kinds
    assert len(store.approvals(incident.id)) == 1, "no second plan for the same deployment"
    # a Cancel of the joined run is recorded on the incident it joined
    joined_run = next(e for e in store.timeline(incident.id) if e.kind == "joined").data.flow_run_id
    assert joined_run and joined_run != str(paused.id)
    store.request_cancel(joined_run, "olga", "mine")  # as `runbooks cancel --by olga` records it
    note_cancellation(SimpleNamespace(id=joined_run, name="joined-run", parameters={}), "Cancelled by olga: mine")
    cancelled = [e for e in store.timeline(incident.id) if e.kind == "cancelled"]
    assert [e.actor for e in cancelled] == ["olga"] and "joined-run" in cancelled[0].message
    texts = _texts(world)
    assert sum(t.startswith("🚨 INCIDENT ALERT") for t in texts) == 1
    assert sum(t.startswith("⏸️ APPROVAL NEEDED") for t in texts) == 1
    first.resume(paused.id, approve=False, approver="dana", reason="not now")
    first.join()
    assert store.leases() == []


def test_a_run_never_joins_a_resolved_incident(world, store):
    from flows.service_down import service_down

    first = ended(service_down(service="api"))  # healthy: resolved as no impact
    assert store.get(first["incident_id"]).resolved_at is not None
    second = ended(service_down(service="api"))
    assert second["incident_id"] != first["incident_id"]
    assert sum(t.startswith("🚨 INCIDENT ALERT") for t in _texts(world)) == 2, "the new incident is announced"
    assert "joined" not in _kinds(store, second["incident_id"])


def test_action_claims_belong_to_their_incident(store):
    from incidents.models import Severity

    def incident(key: str):
        return store.open_incident(dedup_key=key, scenario="service-down", service="api", environment="sandbox",
                                   severity=Severity.P1, title="t", detected_by="test", flow_run_id=None, alert=None)

    one, two = incident("claims:one"), incident("claims:two")
    assert store.begin_action("same-plan", "same-action", one.id, "rollback").first
    store.finish_action(one.id, "same-plan", "same-action", "done", "rolled back")
    other = store.begin_action("same-plan", "same-action", two.id, "rollback")
    assert other.first and other.status == "started", "another incident's done action is not this one's"
    repeat = store.begin_action("same-plan", "same-action", one.id, "rollback")
    assert not repeat.first and repeat.status == "done"


def test_a_security_alert_with_one_bad_address_still_reaches_its_approval(world, store):
    from flows.security_incident import security_incident

    alert = {"source": "generic", "status": "firing", "fingerprint": "sec-1", "startsAt": "2026-11-28T03:00:00Z",
             "labels": {"alertname": "SecurityIncident", "service": "api", "environment": "sandbox"},
             "annotations": {"suspicious_ips": "203.0.113.7, 10.0.0.300 198.51.100.0/24, 0.0.0.0/0"}}
    run = FlowThread(security_incident, service="api", alert=alert)
    paused = run.wait_paused()
    incident = store.incident_for_run(str(paused.id))
    plan = store.approvals(incident.id)[0].plan
    blocked = [a.as_dict() for a in plan.actions if a.kind == "block_ips"]
    assert blocked and "203.0.113.7/32" in str(blocked[0]) and "198.51.100.0/24" in str(blocked[0])
    assert "10.0.0.300" not in str(blocked[0]) and "0.0.0.0/0" not in blocked[0]["params"]["cidrs"]
    dropped = [e for e in store.timeline(incident.id) if e.kind == "addresses_dropped"]
    assert len(dropped) == 1 and "10.0.0.300" in dropped[0].message and "0.0.0.0/0" in dropped[0].message
    run.resume(paused.id, approve=False, approver="sec", reason="test")
    run.join()


def test_the_watch_withdraws_only_after_every_alert_stayed_resolved_for_the_grace(store):
    """The sweep behind the intake's timer (an intake restarted in the grace loses nothing)."""
    from datetime import datetime, timedelta, timezone

    from incidents.models import Severity
    from tasks.approval import ApprovalInput
    from tasks.correlation import withdraw_quiet

    incident = store.open_incident(dedup_key="sandbox/quiet-test", scenario="service-down", service="api",
                                   environment="sandbox", severity=Severity.P0, title="t", detected_by="alert",
                                   flow_run_id="run-q", alert=None)
    for identity in ("down", "errors"):
        store.record_alert(incident.id, identity, identity, "P0", "2026-11-28T03:00:00Z")
    approval = store.request_approval(incident.id, Plan(incident.id, "api", "sandbox", ()), "run-q")
    woken: list[tuple[str, ApprovalInput]] = []

    def wake(run: str, answer: ApprovalInput) -> bool:
        woken.append((run, answer))
        return True

    def sweep(after: float) -> list[int]:
        now = datetime.now(timezone.utc) + timedelta(seconds=after)
        return withdraw_quiet(store, "sandbox", 300, now, wake)

    assert sweep(0) == [], "both alerts fire"
    store.resolve_alert(incident.id, "down")
    assert sweep(400) == [], "one alert still fires"
    store.resolve_alert(incident.id, "errors")
    assert sweep(100) == [], "inside the grace"
    store.record_alert(incident.id, "errors", "errors", "P0", "2026-11-28T03:10:00Z")  # a flap
    assert sweep(400) == [], "it fired again"
    store.resolve_alert(incident.id, "errors")
    assert sweep(301) == [approval] and sweep(600) == [], "withdrawn once"
    row = store.approval(approval)
    assert row.decision == "withdrawn" and woken == [("run-q", ApprovalInput(approve=False, approver=row.approver,
                                                                            reason=row.reason))]
    assert store.get(incident.id).acknowledged_at is None
    store.close(incident.id, "test", "test")


def test_a_runbook_without_a_plan_hands_the_incident_to_the_next(world, store):
    """The messy night: HighErrorRate opens the incident first, ServiceDown joins while its
    runbook still diagnoses. high-error-rate finds nothing to scale (the deploy is bad, not
    the load; with no pod ready it cannot even measure the rate) and abstains, escalating;
    service-down, which waited its turn, takes over and plans the
    rollback, on the same incident."""
    import time

    from flows.high_error_rate import high_error_rate
    from flows.service_down import service_down

    break_api(world)
    first = FlowThread(high_error_rate, service="api")
    deadline = time.monotonic() + 30
    while store.open_for_key("sandbox/api") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    opened = store.open_for_key("sandbox/api")
    assert opened is not None and opened.scenario == "high-error-rate"
    second = FlowThread(service_down, service="api")
    paused = second.wait_paused()
    assert first.join()["outcome"] == "abstained"  # no pod answers /metrics: the error rate is unknown
    incident = store.incident_for_run(str(paused.id))
    assert incident.id == opened.id, "the same incident, no second one"
    [approval] = store.approvals(incident.id)
    assert [a.kind for a in approval.plan.actions] == ["rollback"]
    assert sum(t.startswith("🚨 INCIDENT ALERT") for t in _texts(world)) == 1
    second.resume(paused.id, approve=False, approver="dana", reason="test")
    assert second.join()["outcome"] == "declined"
    assert store.leases() == []


def test_two_runbooks_that_both_abstain_page_once(world, store):
    """The alert began before the bad revision went live, so service-down abstains (the
    evidence conflicts) and escalates; high-error-rate, which waited its turn, cannot measure
    the rate and abstains too. Its reason joins the thread and the issue, but the people the
    first escalation paged are not paged again, and its update names the incident's issue."""
    import time
    from datetime import datetime, timedelta, timezone

    from flows.high_error_rate import high_error_rate
    from flows.service_down import service_down

    began = (datetime.now(timezone.utc) - timedelta(minutes=2)).isoformat().replace("+00:00", "Z")
    alert = {"status": "firing", "startsAt": began,
             "labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}}
    break_api(world)
    first = FlowThread(service_down, service="api", alert=alert)
    deadline = time.monotonic() + 30
    while store.open_for_key("sandbox/api") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    second = FlowThread(high_error_rate, service="api")
    assert first.join()["outcome"] == "abstained"
    assert second.join()["outcome"] == "abstained"
    incident = store.open_for_key("sandbox/api")
    escalations = [e for e in store.timeline(incident.id) if e.kind == "escalated"]
    assert len(escalations) == 2 and escalations[0].data.paged and escalations[1].data.paged == []
    updates = [t for t in _texts(world) if t.startswith("📊 INCIDENT UPDATE") and "ESCALATION" in t]
    assert len(updates) == 2, updates
    assert "Paging: " in updates[0] and "Paging: " not in updates[1]
    assert f"Issue: #{incident.github_issue}" in updates[1]
    comments = world.github.repo("acme/incidents").comments[incident.github_issue]
    assert sum("### Escalated" in c["body"] for c in comments) == 2
    assert "not paged again" in [c["body"] for c in comments if "### Escalated" in c["body"]][-1]
    store.close(incident.id, "test", "test")


def test_an_outage_of_its_own_for_a_held_service_is_never_left_open(world, store):
    """Another incident's runbook holds api (say the real incident, while a drill or another
    cluster's alert opens an incident of its own). Healthy: resolved as no impact at once,
    without waiting for the lease. Broken: no second plan for api, and the incident is
    escalated to a person, not left open with nobody on it."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.service_down import service_down
    from incidents.alerts import target_of
    from incidents.models import Severity

    @flow(name="lease-holder")
    def lease_holder() -> None:
        pass

    with get_client(sync_client=True) as client:  # a live run of Prefect's holds the lease
        holder_run = str(client.create_flow_run(lease_holder, state=Running()).id)
    held = store.open_incident(dedup_key="sandbox/api/held", scenario="service-down", service="api",
                               environment="sandbox", severity=Severity.P1, title="held", detected_by="test",
                               flow_run_id=holder_run, alert=None)
    store.take_lease(target_of("sandbox", "api"), holder_run, held.id, "service-down", lambda _: False)
    store.request_approval(held.id, Plan(held.id, "api", "sandbox", ()), holder_run)  # the holder has its plan
    try:
        def own(key: str) -> AlertParameter:
            return AlertParameter.model_validate({
                "status": "firing", "correlation_key": key,
                "labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"}})

        healthy = ended(service_down(service="api", alert=own("sandbox/api/drill-healthy")))
        assert healthy["outcome"] == "no_impact" and healthy["incident_id"] != held.id
        assert store.get(healthy["incident_id"]).resolved_at is not None
        break_api(world)
        broken = ended(service_down(service="api", alert=own("sandbox/api/drill-broken")))
        assert broken["outcome"] == "escalated" and broken["held_by"] == holder_run and broken["plan"] == []
        incident = store.get(broken["incident_id"])
        assert incident.resolved_at is None and {"findings_added", "escalated"} <= set(_kinds(store, incident.id))
        assert store.approvals(incident.id) == [] and api_image(world) == BROKEN_IMAGE, "nothing changed"
        store.close(incident.id, "test", "test")
    finally:
        store.release_lease(target_of("sandbox", "api"), holder_run)
        store.close(held.id, "test", "test")


@pytest.mark.parametrize("when", ["before the approval", "before the action"])
def test_a_cancel_no_worker_acted_on_ends_the_run_cancelled_not_failed(world, store, monkeypatch, when):
    """A Cancel the worker has not acted on (a worker busy with 50 Cancels at once; here no worker
    at all) is found by the run itself before it pauses or acts: it waits for the worker, then
    ends Cancelled (not Failed, which Prefect's refusal to pause a Cancelling run used to give),
    with the Cancel in the timeline and nothing changed."""
    import dataclasses

    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run
    from prefect.states import Cancelling

    import flows.service_down as service_down_flow
    import tasks.cancellation

    monkeypatch.setattr(tasks.cancellation, "STOP_WAIT_SECONDS", 0.5)

    def cancel_me() -> None:
        with get_client(sync_client=True) as client:
            store.request_cancel(str(flow_run.get_id()), "nora", "taking over")  # as `runbooks cancel` does
            client.set_flow_run_state(flow_run.get_id(), Cancelling(message="Cancelled by nora: taking over"),
                                      force=True)

    real = service_down_flow.SERVICE_DOWN
    if when == "before the approval":
        def plan(*args):
            cancel_me()
            return real.plan(*args)
        scenario = dataclasses.replace(real, plan=plan)
    else:
        def execute(*args):
            cancel_me()
            return real.phases.execute(*args)
        scenario = dataclasses.replace(real, phases=dataclasses.replace(real.phases, execute=execute))
    monkeypatch.setattr(service_down_flow, "SERVICE_DOWN", scenario)
    break_api(world)
    run = FlowThread(service_down_flow.service_down, service="api", return_state=True)
    if when == "before the action":
        run.resume(run.wait_paused().id, approve=True, approver="quinn", reason="go")
    state = run.join()
    assert state.type.value == "CANCELLED", state
    incident = store.incident_for_run(str(state.state_details.flow_run_id))
    cancelled = [e for e in store.timeline(incident.id) if e.kind == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0].actor == "nora", cancelled
    assert "nothing was changed" in cancelled[0].message
    assert api_image(world) == BROKEN_IMAGE
    assert any("Runbook cancelled" in m["text"] for m in world.slack_messages)
