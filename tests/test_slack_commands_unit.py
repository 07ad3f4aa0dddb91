"""The `/incident` command's grammar and its rights, the incident's own buttons and the Resolve
form, without a server: what the intake checks before anything changes."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from deployments.slack_commands import (
    Command,
    CommandError,
    caller_in,
    environments_of,
    handle_in,
    parse,
)
from incidents import templates
from incidents.alerts import Alert, correlation_key, declared, route
from incidents.config import load_config
from incidents.models import Incident, Severity, Status
from sandbox.slack import view_problems

SANDBOX_CONFIG = Path(__file__).resolve().parents[1] / "config" / "sandbox.yaml"


@pytest.fixture(scope="module")
def config_file():
    return load_config(SANDBOX_CONFIG)


@pytest.fixture(scope="module")
def sandbox(config_file):
    return config_file.environments["sandbox"]


def test_every_verb_parses_to_what_it_acts_on():
    assert parse("declare api service-down P1 env=sandbox api answers 503") == Command(
        "declare", None, ("api", "service-down", "P1", "sandbox"), "api answers 503")
    assert parse("declare api high-error-rate") == Command("declare", None, ("api", "high-error-rate", "", ""), "")
    assert parse("status") == Command("status")
    assert parse("status #12") == Command("status", 12)
    assert parse("ack 12") == Command("ack", 12)
    assert parse("resolve 12 rolled back by hand") == Command("resolve", 12, text="rolled back by hand")
    assert parse("severity 12 p0") == Command("severity", 12, ("P0",))
    assert parse("role 12 Comms <@U0SANDKIM|kim>") == Command("role", 12, ("comms", "<@U0SANDKIM|kim>"))
    assert parse("note 12   the  cache was cold ") == Command("note", 12, text="the cache was cold")
    assert parse("cancel #12 wrong service") == Command("cancel", 12, text="wrong service")
    assert parse("summary 12 Sent") == Command("summary", 12)


@pytest.mark.parametrize("text, says", [
    ("", "/incident declare"),
    ("help", "/incident status"),
    ("reboot 12", "unknown command `reboot`"),
    ("ack", "needs the incident's id"),
    ("ack twelve", "needs the incident's id"),
    ("ack 0", "needs the incident's id"),
    ("severity 12 P5", "severity <id> <P0-P3>"),
    ("severity 12", "severity <id> <P0-P3>"),
    ("role 12 boss @sam", "commander|comms|owner|scribe"),
    ("role 12 comms", "commander|comms|owner|scribe"),
    ("resolve 12", "how it was resolved"),
    ("note 12", "the note"),
    ("cancel 12", "why"),
    ("summary 12", "summary <id> sent"),
    ("summary 12 drafted", "summary <id> sent"),
    ("declare api", "scenarios: service-down"),
    ("declare api restart-everything", "scenarios: service-down"),
])
def test_a_command_that_does_not_parse_says_what_to_write(text, says):
    with pytest.raises(CommandError) as refused:
        parse(text)
    assert says in str(refused.value)


def test_rights_come_from_the_config(sandbox):
    sam, ola, rita = (caller_in(sandbox, u) for u in ("U0SANDSAM", "U0SANDOLA", "U0SANDRITA"))
    assert caller_in(sandbox, "U0SANDMAL") is None, "a member the config does not know may do nothing"
    assert sam is not None and sam.name == "sam" and sam.handle == "@ic-sam"
    assert ola is not None and ola.name == "@oncall-ola" and ola.approver_for == ()
    assert rita is not None and rita.approver_for == ("P2", "P3")
    rota = {"commander": "@ic-sam", "comms": "@comms-kim"}
    for verb in ("declare", "ack", "note"):
        assert ola.may(verb, "P1", rota)
    for verb in ("resolve", "severity", "role", "cancel", "summary"):
        assert not ola.may(verb, "P1", rota), verb
        assert ola.may(verb, "P1", {**rota, "commander": "@oncall-ola"}), "the commander, as handed over"
        assert sam.may(verb, "P1", {"commander": "@lead-tess"}), "an approver for the severity"
        assert not rita.may(verb, "P1", rota) and rita.may(verb, "P2", rota)
    kim = caller_in(sandbox, "U0SANDKIM")
    assert kim is not None and kim.may("summary", "P1", rota) and not kim.may("resolve", "P1", rota)


def test_a_declare_finds_its_environment_by_the_channel(config_file):
    assert environments_of(config_file, "C0SANDINC") == ["sandbox"]
    assert environments_of(config_file, "C0SANDSEC") == ["sandbox"]
    assert environments_of(config_file, "C0ELSEWHERE") == []


def test_a_new_holder_is_a_handle_or_a_member_the_config_knows(sandbox):
    assert handle_in(sandbox, "<@U0SANDKIM|kim>") == "@comms-kim"
    assert handle_in(sandbox, "<@U0SANDKIM>") == "@comms-kim"
    assert handle_in(sandbox, "@someone-new") == "@someone-new"
    with pytest.raises(CommandError, match="no handle in the config"):
        handle_in(sandbox, "<@U0SANDMAL|mallory>")


def test_a_declared_incident_correlates_as_an_alert_of_its_service_does():
    at = datetime(2026, 12, 6, 13, 0, tzinfo=timezone.utc)
    alert, request = declared("sandbox", "api", "service-down", "P1", "api is down <!channel>", "sam", at)
    fired = Alert("alertmanager", "firing", "f", "t", {"alertname": "ApiDown", "service": "api",
                                                       "environment": "sandbox"}, {}, None)
    assert request.correlation_key == correlation_key("sandbox", "api", fired.labels) == "sandbox/api"
    assert request.deployment == "service-down/sandbox" and request.severity == "P1"
    assert alert.source == "slack" and alert.starts_at == "2026-12-06T13:00:00.000000Z"
    assert alert.annotations["declared_by"] == "sam"
    again, _ = declared("sandbox", "api", "service-down", "P1", "", "sam", at.replace(minute=5))
    assert again.fingerprint == alert.fingerprint and again.key != alert.key, "one person's declaration, twice"
    other, other_request = declared("sandbox", "api", "service-down", "P1", "", "tess", at)
    assert other.fingerprint != alert.fingerprint and other_request.correlation_key == "sandbox/api", \
        "another person's declaration of the same outage: the same incident"
    assert route(alert, []) is None, "a declaration needs no routing rule"


def _incident(**fields) -> Incident:
    base = dict(id=7, dedup_key="sandbox/api", scenario="service-down", service="api", environment="sandbox",
                severity=Severity.P1, status=Status.INVESTIGATING, title="api is down",
                opened_at=datetime(2026, 12, 6, tzinfo=timezone.utc))
    return Incident(**{**base, **fields})


def test_the_parent_message_offers_acknowledge_until_someone_has_and_resolve_until_it_is():
    opened = _incident()
    assert [b["action_id"] for b in templates.incident_buttons(opened)] == ["runbooks_ack", "runbooks_resolve"]
    acked = _incident(acknowledged_at=datetime.now(timezone.utc), acknowledged_by="@oncall-ola")
    assert [b["action_id"] for b in templates.incident_buttons(acked)] == ["runbooks_resolve"]
    assert templates.incident_buttons(_incident(resolved_at=datetime.now(timezone.utc))) == []
    blocks = templates.with_buttons(templates.slack_blocks("🚨 INCIDENT ALERT\nSeverity: P1", ("Run", "https://x")),
                                    templates.incident_buttons(opened))
    actions = [b for b in blocks if b["type"] == "actions"]
    assert len(actions) == 1 and [e["action_id"] for e in actions[0]["elements"]] == [
        "runbooks_link", "runbooks_ack", "runbooks_resolve"]
    parent = "🚨 INCIDENT ALERT\nSeverity: P1\nStatus: Investigating\nIncident Commander: <@U0SANDSAM>\nPaging: x"
    shown = templates.thread_parent(parent, _incident(severity=Severity.P0, acknowledged_by="@oncall-ola",
                                                      acknowledged_at=datetime.now(timezone.utc)), "<@U0SANDKIM>")
    assert shown.splitlines()[1:4] == ["Severity: P0", "Status: Investigating (acknowledged by @oncall-ola)",
                                       "Incident Commander: <@U0SANDKIM>"]
    assert templates.thread_parent(parent, opened) == parent, "nothing changed, nothing rewritten"


def test_the_resolve_form_is_a_valid_modal_and_a_broken_one_is_refused():
    modal = templates.resolve_modal(_incident(id=123456, title="x" * 500))
    assert view_problems(modal) == []
    assert modal["private_metadata"] == "123456" and modal["callback_id"] == "runbooks_resolve"
    assert "title must be plain_text of 1 to 24 characters" in view_problems(
        {**modal, "title": {"type": "plain_text", "text": "Resolve incident 1234567890"}})
    assert "a view with input blocks needs submit" in view_problems({k: v for k, v in modal.items() if k != "submit"})


def test_the_pinned_manifest_is_the_config_s_and_holds_what_the_app_uses_and_no_more():
    import subprocess
    import sys

    import yaml

    from deployments.slack_manifest import manifest, problems, render

    root = Path(__file__).resolve().parents[1]
    pinned = (root / "deploy" / "slack" / "manifest.yaml").read_text()
    generated = render(manifest(load_config(root / "config" / "example-production.yaml")
                                .environments["production"].approval.page_url),
                       "config/example-production.yaml --env production")
    assert pinned == generated, "deploy/slack/manifest.yaml is stale: run the command in its first lines"
    data = yaml.safe_load(pinned)
    assert problems(data) == []
    assert data["features"]["slash_commands"][0]["url"] == "https://runbooks-intake.internal.example/slack/commands"
    broken = yaml.safe_load(pinned)
    broken["oauth_config"]["scopes"]["bot"].append("channels:history")
    broken["features"]["slash_commands"][0].update(command="/Incident Runbooks", url="http://x/slack/commands")
    broken["settings"]["interactivity"]["request_url"] = "https://x/elsewhere"
    found = problems(broken)
    assert any("exactly chat:write, commands" in p for p in found), found
    assert any("lowercase" in p for p in found) and any("HTTPS url" in p for p in found), found
    assert any("settings.interactivity" in p for p in found), found
    plain = subprocess.run([sys.executable, "-m", "deployments.cli", "slack-manifest", "config/sandbox.yaml"],
                           cwd=root, capture_output=True, text=True, timeout=60,
                           env={**__import__("os").environ, "RUNBOOKS_INTAKE_URL": "http://127.0.0.1:8787"})
    assert plain.returncode != 0 and "HTTPS URLs only" in plain.stderr and "--url" in plain.stderr, plain.stderr


def test_the_scribe_s_notes_go_into_the_post_mortem_escaped():
    from incidents.models import TimelineEvent
    from incidents.postmortem_report import Answers, render
    from incidents.timeline_payloads import NoData

    at = datetime(2026, 12, 6, 13, 40, tzinfo=timezone.utc)
    events = [TimelineEvent(at, "@docs-ana", "note", "Note by @docs-ana: EU checkout fails <!channel> *bold*",
                            NoData()),
              TimelineEvent(at, "runbook", "notified", "Slack: 📊 INCIDENT UPDATE", NoData())]
    report = render(_incident(resolved_at=at), events, [], Answers(), [])
    notes = report.split("### Notes")[1].split("###")[0]
    assert "**2026-12-06 13:40:00 UTC** - Note by @\u200bdocs-ana: EU checkout fails" in notes, notes
    assert "<!channel>" not in notes and "\\*bold\\*" in notes and "INCIDENT UPDATE" not in notes
    assert "- (none)" in render(_incident(resolved_at=at), events[1:], [], Answers(), []).split("### Notes")[1]
