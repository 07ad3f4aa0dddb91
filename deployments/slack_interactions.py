"""Buttons and forms in Slack: the Slack app's interactivity Request URL on the intake.

    POST /slack/interactions    Slack's form-encoded `payload` (block_actions, view_submission)

Acknowledge and Resolve on an incident's parent message act as `/incident ack` and the
Resolve form (a modal opened with views.open; its submission resolves as `/incident resolve`
does); see deployments/slack_commands.py for who may. The rest of this page is Approve/Decline.

Every request is verified with the app's signing secret (RUNBOOKS_SLACK_SIGNING_SECRET):
`X-Slack-Signature` must be `v0=` + hex HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{raw body}`,
and a timestamp older than 5 minutes is refused. Unsigned, wrongly signed and stale requests
get 401 and change nothing. A signature seen before (a replay within the 5 minutes, kept in
Redis) is acknowledged and not acted on.

Slack wants an answer within 3 seconds, so the press is acknowledged at once (200, empty) and
handled right after: the Slack member who pressed must be a configured approver
(`approval.approvers[].slack_user`) allowed for the plan's severity. Their press is a verified
answer, exactly like one on the approval page (so four-eyes works from Slack: two members, two
presses); it resumes the run, and the message is updated through the payload's `response_url`
to say who decided. Anyone else gets an ephemeral "you are not an approver for P0" that only
they see, and nothing changes. A decline is recorded as "declined in Slack"; a longer reason
can be written in the incident's thread.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deployments.approval_page import AnswerRefused, record_answer
from deployments.guards import ReplayCache, TooLarge, read_body
from deployments.prefect_api import PrefectApi
from deployments.slack_payloads import (
    DECISIONS,
    ApprovalPress,
    IncidentPress,
    ResolveSubmission,
    approval_press,
    incident_press,
    resolve_submission,
)
from incidents.models import EventKind, Incident

if TYPE_CHECKING:  # for the annotations only: the config is loaded where it is needed
    from incidents.config import EnvironmentConfig

log = logging.getLogger("runbooks.slack")
SIGNING_SECRET_ENV = "RUNBOOKS_SLACK_SIGNING_SECRET"
MAX_AGE_SECONDS = 300
MAX_BODY_BYTES = 64 * 1024


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float | None = None) -> str | None:
    """None when Slack signed this request (and recently); else why not."""
    if not timestamp or not signature:
        return "the request is not signed"
    try:
        age = (now if now is not None else time.time()) - int(timestamp)
    except ValueError:
        return "the timestamp is not a number"
    if abs(age) > MAX_AGE_SECONDS:
        return "the request is older than 5 minutes"
    expected = b"v0=" + hmac.new(secret.encode(), b"v0:" + timestamp.encode() + b":" + body,
                                 hashlib.sha256).hexdigest().encode()
    # bytes: a header with characters outside ASCII is a wrong signature, not an error
    return None if hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape")) \
        else "the signature does not match"


async def verified_body(request: Request, seen: ReplayCache, what: str) -> bytes | Response:
    """The body of a request Slack signed, recently, and that was not seen before; else the
    answer to give (401 unsigned or stale, 200 and nothing done for a replay, 503 without Redis)."""
    try:
        body = await read_body(request, MAX_BODY_BYTES)
    except TooLarge:
        return _json(413, "request too large")
    secret = os.environ.get(SIGNING_SECRET_ENV)
    if not secret:
        log.error("a Slack %s arrived but %s is not set: refused", what, SIGNING_SECRET_ENV)
        return _json(401, "Slack is not configured here")
    signature = request.headers.get("x-slack-signature", "")
    problem = verify(secret, request.headers.get("x-slack-request-timestamp", ""), signature, body)
    if problem:
        log.warning("Slack %s refused: %s", what, problem)
        return _json(401, problem)
    try:
        if not await seen.first(signature, MAX_AGE_SECONDS * 2):
            log.warning("Slack %s replayed (a signature seen before): acknowledged, not acted on", what)
            return Response(status_code=200)
    except aioredis.RedisError as exc:
        log.error("Slack %s: the replay cache (Redis) is unavailable: %s", what, exc)
        return _json(503, "try again in a moment")
    return body


def routes(prefect: PrefectApi, redis: Callable[[], aioredis.Redis]) -> list[Route]:
    seen = ReplayCache(redis, "runbooks:slack:seen:")

    async def interaction(request: Request) -> Response:
        body = await verified_body(request, seen, "interaction")
        if isinstance(body, Response):
            return body
        try:
            payload = orjson.loads(parse_qs(body.decode("utf-8"))["payload"][0])
        except (KeyError, IndexError, UnicodeDecodeError, orjson.JSONDecodeError):
            return _json(400, "expected a form field `payload` holding JSON")
        if isinstance(payload, dict) and payload.get("type") == "view_submission":
            form = resolve_submission(payload)
            return Response(status_code=200) if form is None else await run_in_threadpool(submitted, form, prefect)
        on_incident = incident_press(payload)
        if on_incident is not None:
            return Response(status_code=200, background=BackgroundTask(handle_incident_press, on_incident, prefect))
        press = approval_press(payload)
        if press is None:  # a link button, or an interaction the runbooks do not use: acknowledged
            return Response(status_code=200)
        return Response(status_code=200, background=BackgroundTask(handle_press, press, prefect))

    return [Route("/slack/interactions", interaction, methods=["POST"])]


def handle_incident_press(press: IncidentPress, prefect: PrefectApi) -> None:
    """Acknowledge: as `/incident ack`. Resolve: the modal that asks how (views.open, within the
    3 s its trigger_id lives), for the commander or an approver of the incident's severity."""
    from deployments.slack_commands import Command, Invocation, authorise, on_incident
    from incidents.followups import RunbookStore
    from incidents.store import StoreError

    who = Invocation(press.user, press.name, press.channel, press.response_url)
    command = Command(press.verb, press.incident_id)
    reply: str | None
    try:
        if press.verb == "ack":
            reply = on_incident(prefect, command, who)
        else:
            allowed = authorise(RunbookStore(), command, who)
            reply = allowed if isinstance(allowed, str) else _open_resolve_modal(allowed[0], allowed[1],
                                                                                 press.trigger_id)
    except StoreError as exc:
        reply = str(exc)
    except Exception as exc:  # the presser must hear of it (logged with its traceback)
        log.exception("Slack %s press by %s not handled", press.verb, press.user)
        reply = f"Your press was not handled ({type(exc).__name__}); nothing changed."
    if reply:
        _respond(press.response_url, _ephemeral(reply))


def _open_resolve_modal(incident: Incident, config: EnvironmentConfig, trigger_id: str) -> str | None:
    from incidents import templates
    from integrations.errors import IntegrationError
    from tasks.context import RunContext

    try:
        with RunContext(incident.environment, incident.service, config).slack_app() as app:
            app.open_view(trigger_id, templates.resolve_modal(incident))
    except IntegrationError as exc:
        return f"The Resolve form did not open ({exc}); `/incident resolve {incident.id} <how>` does the same."
    return None


def submitted(form: ResolveSubmission, prefect: PrefectApi) -> Response:
    """The Resolve modal sent: checked at once (a refusal shows on the form), resolved right after."""
    from deployments.slack_commands import Command, Invocation, authorise
    from incidents.followups import RunbookStore
    from incidents.store import StoreError

    note = form.note
    if not note:
        return _form_error("say how it was resolved")
    command = Command("resolve", form.incident_id, text=note[:1000])
    who = Invocation(form.user, form.name, "", "")
    try:
        allowed = authorise(RunbookStore(), command, who)
    except StoreError as exc:
        return _form_error(str(exc))
    if isinstance(allowed, str):
        return _form_error(allowed)
    incident, config, name = allowed
    if incident.resolved_at is not None:
        return _form_error(f"incident {incident.id} is already resolved")
    return Response(status_code=200, background=BackgroundTask(_resolve_after, prefect, incident, config, name, note))


def _resolve_after(prefect: PrefectApi, incident: Incident, config: EnvironmentConfig, name: str,
                   note: str) -> None:
    from deployments.slack_commands import CommandError, start_resolve
    from tasks.context import RunContext
    from tasks.notify import send_slack

    try:
        log.info("%s", start_resolve(prefect, incident, name, note))
    except CommandError as exc:  # nobody waits on a closed modal: the thread hears of it
        log.warning("incident %s not resolved from Slack: %s", incident.id, exc)
        send_slack(RunContext(incident.environment, incident.service, config), incident.id,
                   f"⚠️ RESOLVE FAILED\n{name}'s resolution was not carried out: {exc}. "
                   f"`/incident resolve {incident.id} <how>` tries again.")


def _form_error(message: str) -> Response:
    return Response(orjson.dumps({"response_action": "errors", "errors": {"resolution": message[:150]}}), 200,
                    media_type="application/json")


def handle_press(press: ApprovalPress, prefect: PrefectApi) -> None:
    """Decide what a press means and tell Slack (after the 200 went out)."""
    try:
        reply = _decide(press, prefect)
    except Exception as exc:  # the presser must hear of it; nothing was recorded past this point
        log.exception("Slack press by %s not handled", press.user)
        reply = _ephemeral(
            f"Your press was not handled ({type(exc).__name__}); nothing changed. Use the approval page."
        )
    _respond(press.response_url, reply)


def _decide(press: ApprovalPress, prefect: PrefectApi) -> dict[str, Any]:
    from incidents.config import load_environment
    from incidents.followups import RunbookStore

    store = RunbookStore()
    approval = store.approval_by_token(press.token) if re.match(r"^[A-Za-z0-9_-]{20,64}$", press.token) else None
    if approval is None or approval.environment is None:
        return _ephemeral("This approval request is unknown; nothing changed.")
    if approval.decision:
        return _ephemeral(f"This request was already decided: {approval.decision} by {approval.approver or '-'}.")
    config = load_environment(approval.environment)
    approver = config.approval.slack_approver(press.user)
    severity, environment = approval.severity, approval.environment
    if approver is None or severity not in approver.severities:
        store.add_event(approval.incident_id, "Slack", EventKind.APPROVAL_REFUSED,
                        f"A {press.decision} press by Slack member {press.user} was refused: "
                        f"not an approver for {severity} in {environment}")
        return _ephemeral(f"You are not an approver for {severity} in {environment}; nothing changed.")
    reason = "approved in Slack" if press.decision == "approve" else "declined in Slack"
    try:
        answer = record_answer(approval, config, approver.name, press.decision, reason, prefect, via="Slack")
    except AnswerRefused as exc:
        return _ephemeral(f"{exc}")
    if answer.repeat:  # a double click: only the presser hears that it was already counted
        return _ephemeral(answer.message)
    return _updated(press, approver.name, answer.status, answer.message)


def _updated(press: ApprovalPress, name: str, status: int, message: str) -> dict[str, Any]:
    """The approval message with who decided; the buttons stay only while more approvers are needed."""
    at = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    mark = "✅" if press.decision == "approve" else "🛑"
    line = f"{mark} <@{press.user}> ({name}, verified in Slack) at {at}: {message}"
    blocks = [b for b in press.blocks if not (b.get("type") == "context" and b.get("block_id") == "runbooks_decided")]
    if status != 202:  # decided: no button is left to press
        blocks = [kept for kept in map(_without_buttons, blocks) if kept is not None]
    blocks.append({"type": "context", "block_id": "runbooks_decided",
                   "elements": [{"type": "mrkdwn", "text": line[:3000]}]})
    text = (press.text + "\n" + line).strip()
    return {"replace_original": True, "text": text[-3000:], "blocks": blocks}


def _without_buttons(block: dict[str, Any]) -> dict[str, Any] | None:
    if block.get("type") != "actions":
        return block
    kept = [e for e in block.get("elements") or [] if e.get("action_id") not in DECISIONS]
    return {**block, "elements": kept} if kept else None


def _ephemeral(text: str) -> dict[str, Any]:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


def _respond(response_url: str, message: dict[str, Any]) -> None:
    from integrations.errors import IntegrationError
    from integrations.slack import respond

    if not response_url.startswith(("https://", "http://")):
        log.warning("Slack press answered without a response_url: %s", message.get("text", "")[:200])
        return
    try:
        respond(response_url, message)
    except IntegrationError as exc:
        log.warning("Slack response_url not reached: %s", exc)


def _json(status: int, message: str) -> Response:
    return Response(orjson.dumps({"ok": False, "error": message}), status, media_type="application/json")
