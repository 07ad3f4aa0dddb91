"""Approve and Decline from Slack: the Slack app's interactivity Request URL on the intake.

    POST /slack/interactions    Slack's form-encoded `payload` (block_actions)

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
from typing import Any
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deployments.approval_page import Refused, record_answer
from deployments.guards import ReplayCache, TooLarge, read_body
from deployments.prefect_api import PrefectApi
from incidents.models import EventKind

log = logging.getLogger("runbooks.slack")
SIGNING_SECRET_ENV = "RUNBOOKS_SLACK_SIGNING_SECRET"
MAX_AGE_SECONDS = 300
MAX_BODY_BYTES = 64 * 1024
DECISIONS = {"runbooks_approve": "approve", "runbooks_decline": "decline"}
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")


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
        press = _press(payload)
        if press is None:  # a link button, or an interaction the runbooks do not use: acknowledged
            return Response(status_code=200)
        return Response(status_code=200, background=BackgroundTask(handle_press, press, prefect))

    return [Route("/slack/interactions", interaction, methods=["POST"])]


def _press(payload: Any) -> dict | None:
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        return None
    action = next((a for a in payload.get("actions") or [] if isinstance(a, dict) and a.get("action_id") in DECISIONS),
                  None)
    user = (payload.get("user") or {}).get("id", "")
    if action is None or not _USER_ID.match(str(user)):
        return None
    return {"user": user, "decision": DECISIONS[action["action_id"]], "token": str(action.get("value", "")),
            "response_url": payload.get("response_url"), "blocks": (payload.get("message") or {}).get("blocks") or [],
            "text": str((payload.get("message") or {}).get("text") or "")}


def handle_press(press: dict, prefect: PrefectApi) -> None:
    """Decide what a press means and tell Slack (after the 200 went out)."""
    try:
        reply = _decide(press, prefect)
    except Exception as exc:  # noqa: BLE001 - the presser must hear of it; nothing was recorded past this point
        log.exception("Slack press by %s not handled", press["user"])
        reply = _ephemeral(
            f"Your press was not handled ({type(exc).__name__}); nothing changed. Use the approval page."
        )
    _respond(press.get("response_url"), reply)


def _decide(press: dict, prefect: PrefectApi) -> dict:
    from incidents.config import load_environment
    from incidents.store import IncidentStore

    store = IncidentStore()
    approval = store.approval_by_token(press["token"]) if re.match(r"^[A-Za-z0-9_-]{20,64}$", press["token"]) else None
    if approval is None or approval.environment is None:
        return _ephemeral("This approval request is unknown; nothing changed.")
    if approval.decision:
        return _ephemeral(f"This request was already decided: {approval.decision} by {approval.approver or '-'}.")
    config = load_environment(approval.environment)
    approver = config.approval.slack_approver(press["user"])
    severity, environment = approval.severity, approval.environment
    if approver is None or severity not in approver.severities:
        store.add_event(approval.incident_id, "Slack", EventKind.APPROVAL_REFUSED,
                        f"A {press['decision']} press by Slack member {press['user']} was refused: "
                        f"not an approver for {severity} in {environment}")
        return _ephemeral(f"You are not an approver for {severity} in {environment}; nothing changed.")
    reason = "approved in Slack" if press["decision"] == "approve" else "declined in Slack"
    try:
        answer = record_answer(approval, config, approver.name, press["decision"], reason, prefect, via="Slack")
    except Refused as exc:
        return _ephemeral(f"{exc}")
    if answer.repeat:  # a double click: only the presser hears that it was already counted
        return _ephemeral(answer.message)
    return _updated(press, approver.name, answer.status, answer.message)


def _updated(press: dict, name: str, status: int, message: str) -> dict:
    """The approval message with who decided; the buttons stay only while more approvers are needed."""
    at = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
    mark = "✅" if press["decision"] == "approve" else "🛑"
    line = f"{mark} <@{press['user']}> ({name}, verified in Slack) at {at}: {message}"
    blocks = [b for b in press["blocks"] if isinstance(b, dict) and not (b.get("type") == "context"
                                                                          and b.get("block_id") == "runbooks_decided")]
    if status != 202:  # decided: no button is left to press
        blocks = [kept for kept in map(_without_buttons, blocks) if kept is not None]
    blocks.append({"type": "context", "block_id": "runbooks_decided",
                   "elements": [{"type": "mrkdwn", "text": line[:3000]}]})
    text = (press.get("text", "") + "\n" + line).strip()
    return {"replace_original": True, "text": text[-3000:], "blocks": blocks}


def _without_buttons(block: dict) -> dict | None:
    if block.get("type") != "actions":
        return block
    kept = [e for e in block.get("elements") or [] if e.get("action_id") not in DECISIONS]
    return {**block, "elements": kept} if kept else None


def _ephemeral(text: str) -> dict:
    return {"response_type": "ephemeral", "replace_original": False, "text": text}


def _respond(response_url: Any, message: dict) -> None:
    from integrations.errors import IntegrationError
    from integrations.slack import respond

    if not isinstance(response_url, str) or not response_url.startswith(("https://", "http://")):
        log.warning("Slack press answered without a response_url: %s", message.get("text", "")[:200])
        return
    try:
        respond(response_url, message)
    except IntegrationError as exc:
        log.warning("Slack response_url not reached: %s", exc)


def _json(status: int, message: str) -> Response:
    return Response(orjson.dumps({"ok": False, "error": message}), status, media_type="application/json")
