"""The clients (GitHub, Slack, PagerDuty, Prometheus) against their vendors' answers in the
published formats (tests/recorded/), through httpx.MockTransport: what is retried and how long
it waits, what is refused at once, what an error names and never shows (a token, a webhook
URL, a routing key), and how a POST that GitHub may have acted on is never simply sent again.
No sandbox, no network: the waits are recorded, not slept. The sandbox's own fidelity to these
formats is held by tests/test_integrations.py, which drives the same clients against it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from integrations.errors import IntegrationError, Refused
from integrations.github import GitHubClient
from integrations.http import RetryPolicy
from integrations.pagerduty import PagerDutyEvents
from integrations.prometheus import PrometheusClient
from integrations.slack import SlackApp, SlackWebhook, respond
from tests.recorded import Script, answer

GITHUB = "https://api.github.test"
TOKEN = "ghp_recordedTOKEN0000000000000000000000"
BOT = "xoxb-1-recorded-bot-token"
HOOK = "https://hooks.slack.test/services/T000/B000/XXXXsecretXXXX"
ROUTING_KEY = "R0UTINGKEYrecorded000000000000000"


@pytest.fixture
def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Each pause a client took, instead of taking it."""
    pauses: list[float] = []
    sleep, test = time.sleep, threading.get_ident()

    def pause(seconds: float) -> None:  # only this test's own: a thread an earlier test left still sleeps
        if threading.get_ident() == test:
            pauses.append(seconds)
        else:
            sleep(seconds)

    monkeypatch.setattr(time, "sleep", pause)
    return pauses


def _github(script: Script, attempts: int = 4) -> GitHubClient:
    return GitHubClient(GITHUB, TOKEN, retry=RetryPolicy(attempts=attempts, backoff=0.5), transport=script.transport)


# -- GitHub ------------------------------------------------------------------------------------------
def test_a_github_read_is_retried_through_5xx_with_a_doubling_backoff(slept):
    commits = f"{GITHUB}/repos/acme/api/commits"
    script = Script(("GET", commits, answer("github", "bad_gateway")),
                    ("GET", commits, answer("github", "unavailable")), ("GET", commits, answer("github", "commits")))
    commit = _github(script).recent_commits("acme/api")[0]
    assert (commit.headline, commit.author, commit.sha[:7]) == ("Fix all the bugs", "Monalisa Octocat", "6dcb09b")
    assert len(script.requests) == 3 and slept == [0.5, 1.0]
    sent = script.requests[0]
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}" and sent.headers["X-GitHub-Api-Version"] == "2022-11-28"


def test_bad_credentials_are_refused_at_once_named_and_without_the_token(slept):
    script = Script(("GET", f"{GITHUB}/repos/acme/api/commits", answer("github", "bad_credentials")))
    with pytest.raises(Refused) as refused:
        _github(script).recent_commits("acme/api")
    error = refused.value
    assert error.status == 401 and not error.transient and slept == [] and len(script.requests) == 1
    assert "GitHub GET /repos/acme/api/commits" in str(error) and "Bad credentials" in str(error)
    assert TOKEN not in str(error)


def test_github_unavailable_to_the_end_is_a_transient_failure_after_every_attempt(slept):
    runs = f"{GITHUB}/repos/acme/api/actions/runs"
    script = Script(*[("GET", runs, answer("github", "unavailable")) for _ in range(3)])
    with pytest.raises(IntegrationError, match="after 3 attempts") as failed:
        _github(script, attempts=3).workflow_runs("acme/api")
    assert failed.value.transient and failed.value.status == 503 and len(slept) == 2


def test_a_github_rate_limit_is_waited_out_not_taken_for_a_refusal(slept):
    """GitHub sends its limits as 403 (docs: "Rate limits for the REST API"): the secondary one
    with Retry-After, the primary one with X-RateLimit-Remaining 0 until X-RateLimit-Reset."""
    commits = f"{GITHUB}/repos/acme/api/commits"
    reset = int(time.time()) + 12
    script = Script(("GET", commits, answer("github", "secondary_rate_limit")),
                    ("GET", commits, answer("github", "primary_rate_limit", reset=reset)),
                    ("GET", commits, answer("github", "commits")))
    assert _github(script).recent_commits("acme/api")
    assert slept[0] == 1.0 and 10 <= slept[1] <= 12  # Retry-After, then until the reset
    script = Script(("GET", commits, answer("github", "forbidden")))
    with pytest.raises(Refused, match="Resource not accessible by integration"):
        _github(script).recent_commits("acme/api")  # a 403 that is no rate limit is a refusal
    assert len(script.requests) == 1


def test_a_dispatch_returns_the_run_github_says_it_created(slept):
    dispatches = f"{GITHUB}/repos/acme/api/actions/workflows/rollback.yml/dispatches"
    script = Script(("POST", dispatches, answer("github", "dispatch_with_run_details")))
    run_id = _github(script).dispatch_workflow("acme/api", "rollback.yml", "main", {"environment": "sandbox"}, "ours-1")
    assert run_id == 22103 and len(script.requests) == 1
    assert script.sent(0) == {"ref": "main", "inputs": {"environment": "sandbox", "dispatch_id": "ours-1"},
                              "return_run_details": True}


def test_a_server_without_run_details_is_sent_the_dispatch_again_and_its_run_found_by_its_id(slept):
    """Older Enterprise Server refuses the parameter (422 naming it): the dispatch goes again
    without it, and the run is the one whose run-name shows our dispatch_id, not the newest."""
    dispatches = f"{GITHUB}/repos/acme/api/actions/workflows/rollback.yml/dispatches"
    runs = f"{GITHUB}/repos/acme/api/actions/workflows/rollback.yml/runs"
    script = Script(("POST", dispatches, answer("github", "dispatch_unknown_parameter")),
                    ("POST", dispatches, answer("github", "dispatched")),
                    ("GET", runs, answer("github", "workflow_runs", now="2026-11-30T02:10:00Z")))
    run_id = _github(script).dispatch_workflow("acme/api", "rollback.yml", "main", {"environment": "sandbox"}, "ours-1")
    assert run_id == 30433  # the newest, 30434, is someone else's
    assert "return_run_details" not in script.sent(1)
    assert script.requests[2].url.params["event"] == "workflow_dispatch"


def test_any_other_refused_dispatch_is_not_sent_again(slept):
    dispatches = f"{GITHUB}/repos/acme/api/actions/workflows/rollback.yml/dispatches"
    script = Script(("POST", dispatches, answer("github", "dispatch_bad_ref")))
    with pytest.raises(Refused, match="No ref found") as refused:
        _github(script).dispatch_workflow("acme/api", "rollback.yml", "nope", {}, "ours-2")
    assert refused.value.status == 422 and len(script.requests) == 1


def test_an_issue_whose_answer_was_lost_is_looked_for_before_it_is_sent_again(slept):
    issues = f"{GITHUB}/repos/acme/incidents/issues"
    script = Script(("POST", issues, answer("github", "bad_gateway")), ("GET", issues, answer("github", "no_issues")),
                    ("POST", issues, answer("github", "issue_created")))
    issue = _github(script).create_issue("acme/incidents", "[P1] api is down", "b", ["incident"])
    assert issue.number == 1347 and [r.method for r in script.requests] == ["POST", "GET", "POST"]
    looked = Script(("POST", issues, answer("github", "bad_gateway")),
                    *[("GET", issues, answer("github", "bad_gateway")) for _ in range(2)])
    with pytest.raises(IntegrationError, match="could not be checked, so it was not sent again"):
        _github(looked, attempts=2).create_issue("acme/incidents", "[P1] api is down", "b", ["incident"])
    assert [r.method for r in looked.requests] == ["POST", "GET", "GET"]  # the look retried; the POST never blind


def test_a_post_github_rate_limited_is_sent_again_after_the_wait_without_a_look(slept):
    """A rate limit's 403 was not acted on: no look for the issue (the look costs the same
    limit), just the wait GitHub asked for; a 403 that is no rate limit is never sent again."""
    issues = f"{GITHUB}/repos/acme/incidents/issues"
    reset = int(time.time()) + 8
    script = Script(("POST", issues, answer("github", "secondary_rate_limit")),
                    ("POST", issues, answer("github", "primary_rate_limit", reset=reset)),
                    ("POST", issues, answer("github", "issue_created")))
    assert _github(script).create_issue("acme/incidents", "[P1] api is down", "b", ["incident"]).number == 1347
    assert [r.method for r in script.requests] == ["POST", "POST", "POST"]
    assert slept[0] == 1.0 and 6 <= slept[1] <= 8  # Retry-After, then until the reset
    refused = Script(("POST", issues, answer("github", "forbidden")))
    with pytest.raises(Refused, match="Resource not accessible by integration") as error:
        _github(refused).create_issue("acme/incidents", "[P1] api is down", "b", ["incident"])
    assert error.value.status == 403 and not error.value.transient and len(refused.requests) == 1


def test_a_jobs_log_is_fetched_from_where_github_redirects_without_the_token(slept):
    logs = f"{GITHUB}/repos/acme/api/actions/jobs/7/logs"
    storage = "https://pipelines.actions.githubusercontent.com/"
    script = Script(("GET", logs, answer("github", "job_logs_redirect")), ("GET", storage, answer("github", "job_log")))
    assert _github(script).job_logs("acme/api", 7).endswith("rolled back: revision 3 -> 2")
    assert "Authorization" not in script.requests[1].headers


# -- Slack -------------------------------------------------------------------------------------------
def test_the_slack_app_waits_its_retry_after_and_posts_in_a_thread(slept):
    api = "https://slack.test/api"
    script = Script(("POST", f"{api}/chat.postMessage", answer("slack", "rate_limited")),
                    ("POST", f"{api}/chat.postMessage", answer("slack", "posted")),
                    ("POST", f"{api}/chat.update", answer("slack", "updated")))
    with SlackApp(api, BOT, transport=script.transport) as app:
        posted = app.post("C0SANDINC", "parent", thread_ts="1764468500.000100")
        app.update(posted.channel, posted.ts, "parent, updated")
    assert slept == [30.0] and (posted.channel, posted.ts) == ("C0SANDINC", "1764468600.000200")
    assert script.sent(1)["thread_ts"] == "1764468500.000100" and script.sent(1)["unfurl_links"] is False
    assert script.requests[1].headers["Authorization"] == f"Bearer {BOT}"


@pytest.mark.parametrize("name", ["invalid_auth", "channel_not_found", "invalid_blocks"])
def test_a_slack_refusal_names_its_error_code_and_never_the_token(slept, name):
    script = Script(("POST", "https://slack.test/api/chat.postMessage", answer("slack", name)))
    with SlackApp("https://slack.test/api", BOT, transport=script.transport) as app, \
            pytest.raises(IntegrationError) as refused:
        app.post("C0SANDINC", "x")
    assert f"Slack refused: {name}" in str(refused.value) and BOT not in str(refused.value)
    assert slept == [] and len(script.requests) == 1  # an answer that refused is not sent again


@pytest.mark.parametrize("name", ["webhook_invalid_token", "webhook_no_service", "webhook_invalid_payload"])
def test_a_refused_webhook_names_slack_s_code_and_never_its_url(slept, name):
    script = Script(("POST", HOOK, answer("slack", name)))
    with SlackWebhook(HOOK, transport=script.transport) as hook, pytest.raises(Refused) as refused:
        hook.post("hello")
    assert name.removeprefix("webhook_") in str(refused.value) and "Slack incoming webhook" in str(refused.value)
    assert HOOK not in str(refused.value) and "XXXXsecretXXXX" not in str(refused.value)
    script = Script(("POST", HOOK, answer("slack", "rate_limited")), ("POST", HOOK, answer("slack", "webhook_ok")))
    SlackWebhook(HOOK, transport=script.transport).post("hello", [{"type": "divider"}])
    assert script.sent(1) == {"text": "hello", "blocks": [{"type": "divider"}]} and slept == [30.0]


def test_an_interaction_is_answered_through_its_response_url(slept):
    url = "https://hooks.slack.test/actions/T000/1/abc"
    script = Script(("POST", url, answer("slack", "webhook_ok")))
    respond(url, {"replace_original": True, "text": "Approved by dana"}, transport=script.transport)
    assert script.sent(0) == {"replace_original": True, "text": "Approved by dana"}


# -- PagerDuty ---------------------------------------------------------------------------------------
def test_a_page_is_accepted_with_its_dedup_key(slept):
    script = Script(("POST", "https://events.pagerduty.test/v2/enqueue",
                     answer("pagerduty", "accepted", dedup_key="sandbox/api/ServiceDown")))
    with PagerDutyEvents("https://events.pagerduty.test", transport=script.transport) as pager:
        key = pager.send(ROUTING_KEY, "trigger", "sandbox/api/ServiceDown", summary="[P1] api is down",
                         severity="critical", details={"incident": 7})
    event = script.sent(0)
    assert key == "sandbox/api/ServiceDown" and event["event_action"] == "trigger"
    assert event["payload"] == {"summary": "[P1] api is down", "source": "incident-runbooks", "severity": "critical",
                                "custom_details": {"incident": 7}}


def test_pagerduty_is_retried_when_throttled_and_an_invalid_event_names_why_without_the_key(slept):
    enqueue = "https://events.pagerduty.test/v2/enqueue"
    script = Script(("POST", enqueue, answer("pagerduty", "rate_limited")),
                    ("POST", enqueue, answer("pagerduty", "unavailable")),
                    ("POST", enqueue, answer("pagerduty", "accepted", dedup_key="k")))
    events = "https://events.pagerduty.test"
    PagerDutyEvents(events, transport=script.transport).send(ROUTING_KEY, "resolve", "k")
    assert len(script.requests) == 3 and len(slept) == 2
    script = Script(("POST", enqueue, answer("pagerduty", "invalid_event")))
    with pytest.raises(Refused, match="Event object is invalid") as refused:
        PagerDutyEvents(events, transport=script.transport).send(ROUTING_KEY, "acknowledge", "k")
    assert refused.value.status == 400 and ROUTING_KEY not in str(refused.value) and len(script.requests) == 1


# -- Prometheus --------------------------------------------------------------------------------------
def test_prometheus_vectors_and_scalars_are_read_and_a_bad_query_refused(slept):
    query = "https://prometheus.test/api/v1/query"
    script = Script(("POST", query, answer("prometheus", "vector")), ("POST", query, answer("prometheus", "scalar")),
                    ("POST", query, answer("prometheus", "matrix")), ("POST", query, answer("prometheus", "bad_data")))
    with PrometheusClient("https://prometheus.test", transport=script.transport) as prometheus:
        assert [(labels["instance"], value) for labels, value in prometheus.query("up{job='api'}")] == [
            ("10.0.0.7:8080", 1.0), ("10.0.0.8:8080", 0.0)]
        assert prometheus.query("scalar(0.25)") == [({}, 0.25)]
        with pytest.raises(IntegrationError, match="expected a vector, got matrix"):
            prometheus.query("up[5m]")
        with pytest.raises(Refused, match="parse error") as refused:
            prometheus.query("up)")
    assert refused.value.status == 400 and script.requests[0].content == b"query=up%7Bjob%3D%27api%27%7D"


def test_a_request_no_answer_was_scripted_for_fails_the_test():
    script = Script()
    with pytest.raises(AssertionError, match="no answer scripted"):
        httpx.Client(transport=script.transport).get("https://nowhere.test/")
