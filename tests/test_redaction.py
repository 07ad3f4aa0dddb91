"""Evidence without secrets: one redaction step for everything copied from the outside world."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest

from incidents.findings import findings_record
from incidents.redaction import MARK, redact, remember_secret
from incidents.templates import markdown_code, markdown_text, slack_blocks, slack_text

CORPUS = Path(__file__).parent / "data" / "leaked_lines.txt"
_VALUE = re.compile(r"⟦(.*?)⟧")


def leaked_lines() -> list[tuple[str, list[str]]]:
    """(line, the values in it that must never be copied out), from the corpus file."""
    rows = []
    for raw in CORPUS.read_text().splitlines():
        if raw.strip() and not raw.startswith("#"):
            rows.append((raw.replace("⟦", "").replace("⟧", ""), _VALUE.findall(raw)))
    return rows


def _renderings(value: str) -> set[str]:
    """How a value reads once a sink has escaped it: GitHub Markdown, Slack mrkdwn, HTML."""
    markdown = re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", value)
    return {value, markdown, html.escape(value), html.escape(value, quote=False),
            value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")}


def assert_nothing_of(values: list[str], text: str, where: str) -> None:
    for value in values:
        pieces = [value] + [p for p in re.split(r"[\s\\]|\\n", value) if len(p) >= 5]
        for piece in pieces:
            for shown in _renderings(piece):
                assert shown not in text, f"{piece!r} survives in {where}: {text[:400]!r}"

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


def _corpus_chunks(size: int = 24) -> list[list[tuple[str, list[str]]]]:
    rows = leaked_lines()  # the pod log tail the runbook reads is 30 lines: two runs cover the corpus
    return [rows[i:i + size] for i in range(0, len(rows), size)]


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("chunk", range(len(_corpus_chunks())))
def test_a_pod_log_full_of_leaked_credentials_is_redacted_in_every_sink(world, store, chunk):
    """A broken api whose pods log the corpus: GitHub issue body and comments, Slack, PagerDuty,
    artifacts, the approval form and its stored findings, the timeline and the run's Prefect
    logs hold none of the values."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.service_down import service_down
    from tests.conftest import FlowThread, break_api, read_all

    rows = _corpus_chunks()[chunk]
    break_api(world)
    world.cluster.app_log_lines[("sandbox", "api")] = [f"ERROR {line}" for line, _ in rows]
    run = FlowThread(service_down, service="api")
    paused = run.wait_paused()
    approval = store.approval_for_run(str(paused.id))
    with get_client(sync_client=True) as client:
        form = [i.value for i in client.filter_flow_run_input(paused.id, key_prefix="", limit=50, exclude_keys=set())]
    run.resume(paused.id, approve=False, approver="ana", reason="test")
    run.join(60)
    incident = store.get(approval.incident_id)
    with get_client(sync_client=True) as client:
        artifacts = [json.dumps(a.data) for a in read_all(client.read_artifacts)
                     if a.key and a.key.startswith(f"incident-{approval.incident_id}-")]
        logs = [log.message for log in read_all(
            client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[paused.id])))]
    repo = world.github.repo("acme/incidents")
    issue = next(i for i in repo.issues if i["number"] == incident.github_issue)
    places = {"issue body": f"{issue['title']}\n{issue['body']}",
              "issue comments": "\n".join(c["body"] for c in repo.comments.get(incident.github_issue, [])),
              "artifacts": "\n".join(artifacts), "slack": json.dumps(world.slack_messages),
              "pagerduty": json.dumps(world.pagerduty.events), "approval form": "\n".join(form),
              "approval findings": json.dumps(findings_record(approval.findings or {})),  # as stored
              "timeline": "\n".join(e.message for e in store.timeline(approval.incident_id)),
              "prefect logs": "\n".join(logs)}
    assert MARK in places["issue comments"] and MARK in places["artifacts"], "the log was copied, redacted"
    for where, text in places.items():
        for _, values in rows:
            assert_nothing_of(values, text, where)


def test_alert_annotations_are_redacted_where_they_enter():
    from incidents.alerts import AlertParameter, parse_alertmanager

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
    manual = AlertParameter.model_validate({"labels": {"service": "api"}, "annotations": {"summary": f"jwt {JWT}"}})
    kept = manual.redacted()
    assert JWT not in str(kept.as_dict()) and kept.labels == {"service": "api"} and JWT in str(manual.as_dict())


def test_the_corpus_holds_forty_realistic_leaks():
    rows = leaked_lines()
    assert len(rows) >= 40 and all(values for _, values in rows)


@pytest.mark.parametrize("line, values", leaked_lines(), ids=lambda v: v[:40] if isinstance(v, str) else None)
def test_every_leaked_shape_is_redacted_in_every_rendering(line, values):
    """Each sink's rendering: raw (timeline, PagerDuty summary, logs), GitHub Markdown (text and
    code blocks), Slack mrkdwn and Block Kit, and the approval page's HTML."""
    sinks = {
        "raw": redact(line),
        "markdown": redact(markdown_text(line, 2000)),
        "markdown code": redact(markdown_code(line)),
        "slack mrkdwn": redact(slack_text(line, 2000)),
        "slack blocks": redact(json.dumps(slack_blocks("Update\n" + slack_text(line, 2000)))),
        "html": redact(html.escape(markdown_text(line, 2000))),
    }
    for where, text in sinks.items():
        assert_nothing_of(values, text, where)


@pytest.mark.parametrize("escape", [
    lambda t: re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", t),           # GitHub Markdown
    lambda t: t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"),  # Slack mrkdwn
    html.escape,                                                             # HTML
    lambda t: t.replace("_", "_\u200b"),                                     # zero-width spaces
], ids=["markdown", "slack", "html", "zwsp"])
def test_redaction_reads_through_an_escaping_it_did_not_see_first(escape):
    """Text rendered before it was redacted (a renderer that forgot) is still redacted."""
    secret = "Xy7_kP2-qR9_mZ4"
    remember_secret(secret)
    token = "ghp_0123456789abcdefghijABCDEFGHIJ012345"
    rendered = escape(f"SET v='{secret}' token {token} and DB_PASSWORD=pw_with_under_1")
    out = redact(rendered)
    assert_nothing_of([secret, token, "pw_with_under_1"], out, "escaped text")
    assert out.count(MARK) >= 3, out


def test_a_known_secret_with_an_underscore_is_redacted_before_markdown_escapes_it():
    secret = "Xy7_kP2-qR9_mZ5"
    remember_secret(secret)
    token = "ghp_0123456789abcdefghijABCDEFGHIJ012346"
    out = redact(markdown_text(f"SET v='{secret}' token {token}"))
    assert_nothing_of([secret, token], out, "markdown")


def test_the_scheme_word_stays_and_the_credential_goes():
    assert redact("Authorization: token 0123456789abcdef0123456789abcdef01234567") == f"Authorization: token {MARK}"
    assert redact("Authorization: Bearer abcdefgh12345") == f"Authorization: Bearer {MARK}"
    assert redact('"password": "p@ss w0rd", "user": "ada"') == f'"password": "{MARK}", "user": "ada"'
    assert redact(f"password={MARK}") == f"password={MARK}", "redaction is idempotent"
    assert redact(redact(markdown_text("DB_PASSWORD=abc_def_1"))) == redact(markdown_text("DB_PASSWORD=abc_def_1"))


def test_ordinary_operational_text_is_left_alone():
    for line in ("GET /orders/{id} 200 12ms", "deployment/api revision 3 -> 2", "the token bucket refilled",
                 "rollout restart of deployment/db", "author: ada", "Authorization failed for user ada"):
        assert redact(line) == line


@pytest.mark.filterwarnings("ignore:Logger 'prefect.flow_runs' attempted to send logs")  # no run: not sent
def test_what_a_run_logs_is_redacted_before_any_handler_sees_it():
    import logging

    import tasks.steps  # noqa: F401 - installs the filter on the run loggers

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    for name in ("prefect.flow_runs", "runbooks"):
        logger = logging.getLogger(name)
        keep = Keep()
        logger.addHandler(keep)
        try:
            logger.warning("connect failed: %s", "postgresql://app:pw_in_log_77@db/app DB_PASSWORD=also_secret_1")
        finally:
            logger.removeHandler(keep)
    assert seen and all("pw_in_log_77" not in m and "also_secret_1" not in m and MARK in m for m in seen), seen
