"""Slack interaction payloads read once at the door (deployments/slack_payloads.py): the shapes
Slack documents for block_actions and view_submission, trimmed, and what is not ours or is
malformed parses to None rather than failing later."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.slack_payloads import (
    ApprovalPress,
    IncidentPress,
    ResolveSubmission,
    approval_press,
    incident_press,
    resolve_submission,
)

USER = {"id": "U0SANDSAM", "username": "sam", "name": "sam", "team_id": "T0SANDBOX"}
BLOCKS: list[dict[str, Any]] = [
    {"type": "section", "block_id": "plan", "text": {"type": "mrkdwn", "text": "Roll back api"}},
    {"type": "actions", "block_id": "decide", "elements": [
        {"type": "button", "action_id": "runbooks_approve", "value": "t" * 24},
        {"type": "button", "action_id": "runbooks_decline", "value": "t" * 24}]}]


def _block_actions(action_id: str, value: str, **overrides: Any) -> dict[str, Any]:
    payload = {"type": "block_actions", "user": USER, "api_app_id": "A0SANDBOX", "token": "legacy",
               "trigger_id": "1337.42.abcd", "team": {"id": "T0SANDBOX"}, "channel": {"id": "C0INCIDENTS"},
               "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C0INCIDENTS"},
               "message": {"type": "message", "text": "Approval needed", "blocks": BLOCKS},
               "response_url": "https://hooks.slack.com/actions/T0SANDBOX/1/abc",
               "actions": [{"action_id": action_id, "block_id": "decide", "value": value, "type": "button",
                            "action_ts": "1700000001.000200"}]}
    return {**payload, **overrides}


def test_an_approve_press_is_read_with_the_message_it_replaces():
    press = approval_press(_block_actions("runbooks_approve", "t" * 24))
    assert press == ApprovalPress(user="U0SANDSAM", decision="approve", token="t" * 24,
                                  response_url="https://hooks.slack.com/actions/T0SANDBOX/1/abc", blocks=BLOCKS,
                                  text="Approval needed")
    assert approval_press(_block_actions("runbooks_decline", "x")).decision == "decline"
    assert incident_press(_block_actions("runbooks_approve", "7")) is None, "an approval is not an incident press"


def test_acknowledge_and_resolve_presses_name_the_incident():
    ack = incident_press(_block_actions("runbooks_ack", "42"))
    assert ack == IncidentPress(user="U0SANDSAM", name="sam", verb="ack", incident_id=42, trigger_id="1337.42.abcd",
                                response_url="https://hooks.slack.com/actions/T0SANDBOX/1/abc", channel="C0INCIDENTS")
    assert incident_press(_block_actions("runbooks_resolve", "42")).verb == "resolve"
    assert approval_press(_block_actions("runbooks_ack", "42")) is None


@pytest.mark.parametrize("payload", [
    _block_actions("runbooks_ack", "forty-two"),  # not an incident number
    _block_actions("runbooks_ack", "4²"),  # a digit to str.isdigit, not to int()
    _block_actions("runbooks_ack", "9" * 5000),  # past the store's bigint (and Python's int() digit limit)
    _block_actions("runbooks_ack", "42", user={"id": "not a member"}),
    _block_actions("runbooks_ack", "42", user="U0SANDSAM"),  # malformed: the user is not an object
    _block_actions("runbooks_ack", "42", actions="not a list"),
    _block_actions("someone_elses_button", "42"),
    _block_actions("runbooks_ack", "42", type="interactive_message"),
    ["not", "a", "payload"],
])
def test_a_press_that_is_not_ours_or_is_malformed_is_none(payload):
    assert incident_press(payload) is None and approval_press(payload) is None


def _submission(note: Any, **view: Any) -> dict[str, Any]:
    return {"type": "view_submission", "team": {"id": "T0SANDBOX"}, "user": USER,
            "view": {"id": "V0MODAL", "type": "modal", "callback_id": "runbooks_resolve", "private_metadata": "42",
                     "state": {"values": {"resolution": {"note": {"type": "plain_text_input", "value": note}}}},
                     **view}}


def test_the_resolve_form_is_read_with_its_note_folded():
    assert resolve_submission(_submission("  rolled back\n the   deploy ")) == ResolveSubmission(
        user="U0SANDSAM", name="sam", incident_id=42, note="rolled back the deploy")
    assert resolve_submission(_submission(None)).note == "", "an empty form is the handler's to refuse"


@pytest.mark.parametrize("payload", [
    _submission("done", callback_id="someone_elses_modal"),
    _submission("done", private_metadata="42; DROP"),
    _submission("done", private_metadata="٤٢"),  # Arabic-Indic digits: not what the form was given
    {**_submission("done"), "user": {"id": "nobody"}},
    {**_submission("done"), "type": "block_actions"},
])
def test_a_submission_that_is_not_our_resolve_form_is_none(payload):
    assert resolve_submission(payload) is None
