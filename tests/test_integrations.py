"""The integration clients against the sandbox, including its injected failures, the real
kubectl, destructive tasks without a grant, and the incident store on real PostgreSQL. The
clients' own rules (retries and their waits, refusals, what an error never shows) are tested
against the vendors' answers in the unit tier (tests/test_clients_unit.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from integrations import http
from integrations.errors import IntegrationError
from integrations.github import GitHubClient
from integrations.http import RetryPolicy
from integrations.kubernetes import KubernetesClient
from integrations.probes import probe_all
from integrations.slack import SlackWebhook
from sandbox.http import Fault
from sandbox.world import GITHUB_TOKEN
from tests.conftest import BROKEN_IMAGE, api_image, break_api, kubectl

FAST = RetryPolicy(attempts=4, backoff=0.05)


def test_github_dispatch_jobs_and_redirected_logs(world):
    gh = GitHubClient(world.url + "/github", GITHUB_TOKEN)
    break_api(world)
    run_id = gh.dispatch_workflow("acme/api", "rollback.yml", "main", {"environment": "sandbox"}, "t-1")
    run = gh.wait_for_run("acme/api", "rollback.yml", run_id, timeout=20, poll=0.2)
    assert run.conclusion == "success" and run.event == "workflow_dispatch"
    job = gh.run_jobs("acme/api", run.id)[0]
    log = gh.job_logs("acme/api", job.id)
    assert "rolled back: revision 3 -> 2" in log
    assert api_image(world).endswith(":v1.5.0")
    # a failing workflow shows up in --log-failed
    gh.dispatch_workflow("acme/api", "rollback.yml", "main", {"environment": "mars"}, "t-2")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        failed = gh.workflow_runs("acme/api", workflow="rollback.yml")[0]
        if failed.status == "completed":
            break
        time.sleep(0.2)
    assert failed.inputs == {"environment": "mars", "dispatch_id": "t-2"} and failed.conclusion == "failure"
    assert "unknown environment 'mars'" in "".join(gh.failed_job_logs("acme/api", failed.id).values())


@pytest.mark.parametrize("run_details", [True, False], ids=["github.com", "older enterprise server"])
def test_a_dispatch_follows_its_own_run_never_the_newest(world, run_details):
    """Someone else dispatches the same workflow right after us: the client follows the run
    GitHub says it created (return_run_details), or, where the server refuses that parameter,
    the run whose run-name shows our dispatch_id; never simply the newest."""
    world.github.run_details = run_details
    taken: list[int] = []

    def someone_else(full: str, workflow: str) -> None:
        if not taken:  # another operator's dispatch of the same workflow lands right after ours
            taken.append(world.github.record_run(full, workflow, "rollback (production) theirs", None,
                                                 event="workflow_dispatch")["id"])

    world.github.on_dispatch = someone_else
    gh = GitHubClient(world.url + "/github", GITHUB_TOKEN)
    run_id = gh.dispatch_workflow("acme/api", "rollback.yml", "main", {"environment": "sandbox"}, "ours-1")
    newest = gh.workflow_runs("acme/api", workflow="rollback.yml", event="workflow_dispatch")[0]
    assert taken and newest.id == taken[0] != run_id, "someone else's run is the newest"
    assert "ours-1" in gh.get_run("acme/api", run_id).display_title
    assert gh.wait_for_run("acme/api", "rollback.yml", run_id, timeout=20, poll=0.2).conclusion == "success"


def test_the_slack_app_honours_retry_after_and_names_a_refusal_without_its_token(world):
    from integrations.slack import SlackApp
    from sandbox.slack import BOT_TOKEN

    world.faults.set("slack", Fault(status=429, retry_after=1, count=1))
    start = time.monotonic()
    with SlackApp(world.url + "/slack/api", BOT_TOKEN) as app:
        parent = app.post("C0SANDINC", "parent")
        reply = app.post("C0SANDINC", "reply", thread_ts=parent.ts)
        app.update("C0SANDINC", parent.ts, "parent, updated")
    assert time.monotonic() - start >= 1.0
    assert [(m["text"], m["thread_ts"]) for m in world.slack_messages] == [("parent, updated", None),
                                                                           ("reply", parent.ts)]
    assert reply.channel == "C0SANDINC" and reply.ts != parent.ts
    for token, channel, error in (
        ("xoxb-wrong", "C0SANDINC", "invalid_auth"),
        (BOT_TOKEN, "C0NOWHERE", "channel_not_found"),
    ):
        with SlackApp(world.url + "/slack/api", token, retry=FAST) as app, pytest.raises(IntegrationError) as err:
            app.post(channel, "x")
        assert error in str(err.value) and "xoxb-wrong" not in str(err.value)
    with SlackApp(world.url + "/slack/api", BOT_TOKEN) as app, pytest.raises(IntegrationError) as err:
        app.post("C0SANDINC", "x", [{"type": "header", "text": {"type": "plain_text", "text": "h" * 151}}])
    assert "invalid_blocks" in str(err.value)  # Block Kit's header limit, as Slack enforces it


def test_the_async_request_retries_like_the_sync_one(world):
    """The intake's calls to Prefect go through `arequest`: the same retries and errors as every client."""
    import asyncio

    import httpx

    from integrations.http import arequest

    async def call(path: str):
        async with httpx.AsyncClient(base_url=world.url) as client:
            return await arequest(client, "GET", path, what="the sandbox", retry=FAST)

    world.faults.set("services", Fault(status=503, count=2, retry_after=0))
    assert asyncio.run(call("/services/api/__ok")).status_code == 200
    assert world.faults.hits["services"] == 3
    with pytest.raises(IntegrationError) as refused:
        asyncio.run(call("/services/nowhere/__ok"))  # 404: not worth asking again
    assert refused.value.status == 404 and not refused.value.transient


def test_one_retry_rule_reads_retry_after_as_seconds_or_a_date():
    from datetime import datetime, timedelta, timezone
    from email.utils import format_datetime

    policy = RetryPolicy(attempts=4, backoff=0.5, max_wait=30)
    assert policy.pause(1, "1.5") == 1.5 and policy.pause(1, "120") == 30  # capped
    in_ten = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    assert 8 <= policy.pause(1, in_ten) <= 10
    assert policy.pause(3, None) == 2.0 and policy.pause(1, "soon") == 1.0  # backoff; unreadable: a second


def test_probes_report_status_and_timeouts(world):
    world.faults.set("services", Fault(delay=3.0, status=None))
    start = time.monotonic()
    results = probe_all([world.url + "/services/api/__ok", "http://127.0.0.1:9/unreachable"], timeout=0.5)
    assert time.monotonic() - start < 2.0
    assert not results[0].ok and "no answer within 0.5 s" in results[0].error
    assert not results[1].ok and "ConnectError" in results[1].error


def test_a_request_held_by_a_delay_goes_on_when_the_fault_is_cleared(world):
    """The sandbox's delay holds a request; clearing (or replacing) the fault lets it go on at
    once, answered as without the fault (tests/test_ui.py holds its load's probes this way)."""
    world.faults.set("services", Fault(delay=30.0, path="/services/api/"))
    answered: list[tuple[int, float]] = []
    started = time.monotonic()
    held = threading.Thread(target=lambda: answered.append(
        (http.get(world.url + "/services/api/__ok", timeout=40).status_code, time.monotonic() - started)))
    held.start()
    frontend = http.get(world.url + "/services/frontend/__ok", timeout=5)  # another path: not held
    assert frontend.status_code == 200 and time.monotonic() - started < 2
    time.sleep(1.0)
    assert not answered, "the request was not held"
    http.delete(world.url + "/_sandbox/faults", timeout=5).raise_for_status()
    held.join(5)
    assert answered and answered[0][0] == 200 and answered[0][1] < 3, answered


def test_kubernetes_client_operations(world):
    kube = KubernetesClient(str(world.runbooks_kubeconfig))
    assert kube.rollout_status("sandbox", "api").done
    assert kube.scale("sandbox", "api", 5) == (3, 5)
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["replicas"] == 5
    stamp = kube.rollout_restart("sandbox", "api")
    dep = world.cluster.get("deployments", "sandbox", "api")
    assert dep["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] == stamp
    break_api(world)
    time.sleep(0.5)
    pods = kube.pods("sandbox", "api")
    assert pods and all(p.waiting_reason == "CrashLoopBackOff" and not p.ready for p in pods)
    assert "FATAL" in kube.pod_logs("sandbox", pods[0].name, "api")
    result = kube.rollout_undo("sandbox", "api")
    assert (result.from_revision, result.to_revision, result.skipped) == (4, 3, False)
    with pytest.raises(IntegrationError, match="not found"):
        kube.get_deployment("sandbox", "nope")


def test_real_kubectl_drives_the_sandbox(world):
    assert "api" in kubectl(world, "get", "deployments").stdout
    kubectl(world, "set", "image", "deployment/api", f"api={BROKEN_IMAGE}")
    stuck = kubectl(world, "rollout", "status", "deployment/api", "--timeout=2s", check=False)
    assert stuck.returncode != 0 and "updated replicas are available" in stuck.stdout
    assert "FATAL" in kubectl(world, "logs", "deployment/api", "--tail=5").stdout
    assert "rolled back" in kubectl(world, "rollout", "undo", "deployment/api").stdout
    assert "successfully rolled out" in kubectl(world, "rollout", "status", "deployment/api", "--timeout=20s").stdout
    assert api_image(world).endswith(":v1.5.0")
    kubectl(world, "scale", "deployment/api", "--replicas=5")
    kubectl(world, "rollout", "restart", "deployment/api")
    assert "successfully rolled out" in kubectl(world, "rollout", "status", "deployment/api", "--timeout=20s").stdout
    ready = kubectl(world, "get", "deployment/api", "-o", "jsonpath={.status.readyReplicas}").stdout
    assert ready == "5"
    history = kubectl(world, "rollout", "history", "deployment/api").stdout
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "3", "4", "5"]


def test_destructive_tasks_refuse_to_run_without_a_grant(world, test_config):
    from prefect.logging import disable_run_logger

    from incidents.plans import Grant, NotApproved, Plan, PlannedAction
    from tasks.context import RunContext
    from tasks.deploys import restart_deployment, rollback_deployment

    ctx = RunContext.load("sandbox", "api")
    action = PlannedAction("rollback", "deployment/api", "revision 2", "revision 1", "kubectl rollout undo",
                           {"namespace": "sandbox", "deployment": "api", "strategy": "kubernetes_undo",
                            "from_revision": 2, "to_revision": 1, "to_image": "x"})
    other = PlannedAction("rollout_restart", "deployment/api", "3 pods", "replaced", "kubectl rollout restart",
                          {"namespace": "sandbox", "deployment": "api"})
    grant_for_other = Grant.issue(Plan(1, "api", "sandbox", (other,)), "alice", "ok")
    before = world.cluster.get("deployments", "sandbox", "api")
    with disable_run_logger():
        with pytest.raises(NotApproved):
            rollback_deployment.fn(ctx, action, None)
        with pytest.raises(NotApproved):
            rollback_deployment.fn(ctx, action, grant_for_other)
        with pytest.raises(NotApproved):
            restart_deployment.fn(ctx, action, Grant.issue(Plan(1, "api", "sandbox", (other,)), "alice", "ok"))
    after = world.cluster.get("deployments", "sandbox", "api")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_incident_store_dedups_open_incidents(store, world):
    from incidents.alerts import AlertParameter
    from incidents.models import EventKind, Severity

    args = dict(dedup_key=f"test:{time.time()}", scenario="service-down", service="api", environment="sandbox",
                severity=Severity.P1, title="t", detected_by="test", flow_run_id=None,
                alert=AlertParameter(fingerprint="f"))
    first = store.open_incident(**args)
    second = store.open_incident(**args)
    assert first.created and not second.created and first.id == second.id
    store.add_event(first.id, "alice", EventKind.ACKNOWLEDGED, "checked dashboards")
    store.close(first.id, "cause", "fix")
    third = store.open_incident(**args)
    assert third.created and third.id != first.id
    resolved = store.get(first.id)
    assert resolved.resolved_at and resolved.root_cause == "cause"
    assert [e.message for e in store.timeline(first.id)] == ["checked dashboards"]
    store.ensure_schema()  # idempotent


def test_a_process_whose_schema_is_in_place_takes_no_lock_to_check_it(store, world, database_url):
    """Applying the schema takes exclusive table locks even where nothing changes (ALTER TABLE
    ... ADD COLUMN IF NOT EXISTS), and a run's process doing so on its first write deadlocked
    against another run's INSERT. A new process whose schema is in place only reads its
    fingerprint: it does not wait behind a writer's open transaction."""
    import psycopg

    from incidents.store import IncidentStore

    store.ensure_schema()
    with psycopg.connect(database_url) as writer:  # a run mid-transaction on the incidents table
        writer.execute("LOCK TABLE incidents IN ROW EXCLUSIVE MODE")
        IncidentStore._ready.discard(database_url)  # as a new process starts
        started = time.monotonic()
        IncidentStore(database_url).ensure_schema()  # the old code waited 5 s here, then failed
        took = time.monotonic() - started
        writer.rollback()
    assert took < 2.0, f"ensure_schema waited {took:.1f} s behind a writer"
    assert database_url in IncidentStore._ready


def test_redis_failures_while_scanning_are_named_like_every_other():
    """SCAN runs lazily as keys are read: its failures must still come out as IntegrationError."""
    from integrations.cache import CacheClient
    from tests.conftest import free_port

    with CacheClient(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5) as cache:  # nothing listens there
        for call in (lambda: cache.delete_prefix("api:"), lambda: cache.count_prefix("api:")):
            with pytest.raises(IntegrationError, match=r"Redis 127\.0\.0\.1:\d+/0 \(SCAN\) failed"):
                call()
        with pytest.raises(ValueError, match="invalid cache key prefix"):
            cache.delete_prefix("*")


def test_every_client_shares_one_verifying_tls_context():
    """Building a TLS context loads the CA bundle (tens of ms of CPU); the runbooks open a client
    per step, so they share one, and it still verifies certificates and host names."""
    import ssl

    from integrations.http import tls_context
    from integrations.prometheus import PrometheusClient

    shared = tls_context()
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    clients: list[Any] = [GitHubClient("https://api.github.example", "t"), SlackWebhook("https://hooks.slack.example/x"),
               PrometheusClient("https://prometheus.example")]
    try:
        for made in clients:
            assert made._http._transport._pool._ssl_context is shared
    finally:
        for made in clients:
            made.close()


def test_a_rate_limited_post_waits_its_retry_after_and_is_sent_again(world):
    world.faults.set("github", Fault(status=429, retry_after=1, count=1))
    gh = GitHubClient(world.url + "/github", GITHUB_TOKEN, retry=FAST)
    started = time.monotonic()
    issue = gh.create_issue("acme/incidents", "rate limited", "b", ["incident"])
    assert time.monotonic() - started >= 0.9, "Retry-After honoured"
    assert issue.number == 1 and world.faults.hits["github"] == 2, "a 429 was not acted on: no look, one resend"


def test_the_config_a_deployment_reads_and_when_it_changed(world):
    """A ConfigMap changed with the real kubectl is stamped by the API (managedFields time); a
    write that changes nothing keeps the old time; a value the service rejects, rolled out by
    a restart, crash-loops the new pods with the same image."""
    from integrations.kubernetes_config import ConfigRef, config_refs

    kube = KubernetesClient(str(world.runbooks_kubeconfig))
    refs = config_refs(kube.get_deployment("sandbox", "api"))
    assert refs == [ConfigRef("configmap", "api-config"), ConfigRef("secret", "api-credentials")]
    seeded = kube.last_changed("sandbox", refs[0]).changed_at
    time.sleep(1.1)
    kubectl(world, "patch", "configmap", "api-config", "-p", '{"data": {"log_level": "info"}}')  # no change
    assert kube.last_changed("sandbox", refs[0]).changed_at == seeded
    kubectl(world, "patch", "configmap", "api-config", "-p", '{"data": {"log_level": "verbose"}}')
    changed = kube.last_changed("sandbox", refs[0]).changed_at
    assert seeded is not None and changed is not None and changed > seeded
    kubectl(world, "rollout", "restart", "deployment/api")
    time.sleep(0.5)
    pods = kube.pods("sandbox", "api")
    assert pods and all(p.waiting_reason == "CrashLoopBackOff" for p in pods if p.image.endswith(":v1.5.0"))
    missing = kube.last_changed("sandbox", ConfigRef("secret", "no-such-secret"))
    assert missing.changed_at is None and "not found" in (missing.error or "")
    spec = {"spec": {"template": {"spec": {
        "initContainers": [{"envFrom": [{"secretRef": {"name": "init-creds"}}]}],
        "containers": [{"env": [{"name": "A", "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "a"}}},
                                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}]}],
        "volumes": [{"name": "v", "projected": {"sources": [{"configMap": {"name": "proj"}},
                                                            {"secret": {"name": "tls"}}]}},
                    {"name": "w", "secret": {"secretName": "certs"}}]}}}}
    assert [(r.kind, r.name) for r in config_refs(spec)] == [
        ("configmap", "flags"), ("configmap", "proj"), ("secret", "certs"), ("secret", "db"), ("secret", "init-creds"),
        ("secret", "tls")]


def test_reach_tells_unresolvable_from_refused_from_silent_from_an_error_answer(world):
    """The network and DNS check: each way of not reaching a host is named, within its timeout."""
    import socket

    from integrations.reach import reach

    silent = socket.socket()  # accepts the connection (backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        found = {
            "dns": reach("dns", "http://payments.does-not-exist.invalid/health", 2.0),
            "refused": reach("refused", "http://127.0.0.1:1/health", 2.0),
            "silent": reach("silent", f"http://127.0.0.1:{silent.getsockname()[1]}/health", 1.0),
            "down": None,
            "up": reach("up", f"{world.url}/dependencies/payments/health", 2.0),
        }
        http.post(f"{world.url}/_sandbox/dependency", json={"service": "api", "down": True}).raise_for_status()
        found["down"] = reach("down", f"{world.url}/dependencies/payments/health", 2.0)
    finally:
        silent.close()
    assert {name: r.outcome for name, r in found.items()} == {
        "dns": "unresolvable", "refused": "refused", "silent": "timed_out", "down": "http_error", "up": "ok"}
    assert "does not resolve" in found["dns"].detail and found["down"].status == 503
    assert found["silent"].seconds < 3
