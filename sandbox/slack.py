"""Slack as the runbooks meet it: incoming webhooks, the Web API methods a Slack app uses
(chat.postMessage, chat.update), interaction `response_url`s, and a person pressing a button.

The shapes follow Slack's documentation: Web API methods answer HTTP 200 with `ok` true or
false and an `error` code (api.slack.com/web); a message is named by its channel and `ts`, and
`thread_ts` puts a reply in the parent's thread (api.slack.com/messaging/managing#threading);
Block Kit limits are checked as documented (api.slack.com/reference/block-kit) and a message
that breaks one is refused with `invalid_blocks`; an interaction arrives as a form-encoded
`payload`, signed with the app's signing secret (api.slack.com/authentication/verifying-requests-from-slack).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from sandbox.http import Request, Response

TEAM = "T0SANDBOX"
BOT_TOKEN = "xoxb-sandbox-bot-token"
CHANNELS = {"C0SANDINC": "incidents", "C0SANDSEC": "security"}
WEBHOOKS = {"/slack/services/T0SANDBOX/B0SANDBOX/sandbox-webhook-secret": "C0SANDINC",
            "/slack/services/T0SANDBOX/B0SECURITY/security-webhook-secret": "C0SANDSEC"}
# the sandbox's people (config/sandbox.yaml gives approvers sam and tess these member IDs)
USERS = {"U0SANDSAM": "sam", "U0SANDTESS": "tess", "U0SANDRITA": "rita", "U0SANDOLA": "ola", "U0SANDMAL": "mallory"}
ACTION_IDS = {"approve": "runbooks_approve", "decline": "runbooks_decline"}


def block_problems(blocks: Any) -> list[str]:
    """What breaks Block Kit's documented limits in `blocks` (empty: a valid message)."""
    if not isinstance(blocks, list):
        return ["blocks must be an array"]
    problems = [] if len(blocks) <= 50 else ["more than 50 blocks"]
    action_ids: list[str] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        text = (block.get("text") or {}) if isinstance(block, dict) else {}
        if kind == "header":
            if text.get("type") != "plain_text" or not 0 < len(text.get("text", "")) <= 150:
                problems.append(f"block {i}: a header needs plain_text of 1 to 150 characters")
        elif kind == "section":
            if text.get("type") not in ("mrkdwn", "plain_text") or not 0 < len(text.get("text", "")) <= 3000:
                problems.append(f"block {i}: a section's text must be 1 to 3000 characters")
        elif kind == "context":
            if not 0 < len(block.get("elements") or []) <= 10:
                problems.append(f"block {i}: a context block holds 1 to 10 elements")
        elif kind == "actions":
            elements = block.get("elements") or []
            if not 0 < len(elements) <= 25:
                problems.append(f"block {i}: an actions block holds 1 to 25 elements")
            for element in elements:
                problems += [f"block {i}: {p}" for p in _button_problems(element)]
                if element.get("action_id"):
                    action_ids.append(element["action_id"])
        else:
            problems.append(f"block {i}: unknown block type {kind!r}")
        if isinstance(block, dict) and len(str(block.get("block_id", ""))) > 255:
            problems.append(f"block {i}: block_id longer than 255 characters")
    if len(set(action_ids)) != len(action_ids):
        problems.append("action_id values must be unique within a message")
    return problems


def _button_problems(element: dict) -> list[str]:
    if element.get("type") != "button":
        return [f"unsupported element {element.get('type')!r}"]
    problems = []
    label = element.get("text") or {}
    if label.get("type") != "plain_text" or not 0 < len(label.get("text", "")) <= 75:
        problems.append("a button's text must be plain_text of 1 to 75 characters")
    if len(element.get("action_id", "")) > 255 or len(element.get("value", "")) > 2000:
        problems.append("a button's action_id is at most 255 characters and its value 2000")
    if element.get("style") not in (None, "primary", "danger"):
        problems.append("a button's style is primary or danger")
    if len(element.get("url", "")) > 3000:
        problems.append("a button's url is at most 3000 characters")
    confirm = element.get("confirm")
    if confirm is not None:
        limits = {"title": 100, "text": 300, "confirm": 30, "deny": 30}
        for key, limit in limits.items():
            part = confirm.get(key) or {}
            if part.get("type") != "plain_text" or not 0 < len(part.get("text", "")) <= limit:
                problems.append(f"a confirm dialog's {key} must be plain_text of 1 to {limit} characters")
    return problems


class Slack:
    def __init__(self, base_url: str, signing_secret: str | None = None):
        self.base_url = base_url
        self.signing_secret = signing_secret
        self.interactions_url: str | None = None  # the app's Request URL (the intake's /slack/interactions)
        self.messages: list[dict] = []
        self._responses: dict[str, dict] = {}  # response_url token -> {channel, ts, user, uses}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self._responses.clear()

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._clock):06d}"

    def _record(self, **message: Any) -> dict:
        message.setdefault("thread_ts", None)
        message.setdefault("blocks", [])
        message["received_at"] = time.time()
        with self._lock:
            self.messages.append(message)
        return message

    def find(self, channel: str, ts: str) -> dict | None:
        with self._lock:
            return next((m for m in self.messages if m["channel"] == channel and m["ts"] == ts
                         and not m.get("ephemeral")), None)

    # -- what the runbooks call -----------------------------------------------------------------
    def handle(self, req: Request) -> Response | None:
        if req.method != "POST":
            return None
        if req.path in WEBHOOKS:
            return self._webhook(req, WEBHOOKS[req.path])
        if req.path.startswith("/slack/services/"):
            return Response.text("invalid_token", 403)  # Slack's answer for an unknown webhook
        if req.path.startswith("/slack/api/"):
            return self._web_api(req, req.path.rsplit("/", 1)[1])
        if req.path.startswith("/slack/actions/"):
            return self._response_url(req, req.path.rsplit("/", 1)[1])
        return None

    def _webhook(self, req: Request, channel: str) -> Response:
        try:
            payload = json.loads(req.body)
        except ValueError:
            return Response.text("invalid_payload", 400)
        if not isinstance(payload, dict) or not (payload.get("text") or payload.get("blocks")):
            return Response.text("no_text", 400)
        if payload.get("blocks") and block_problems(payload["blocks"]):
            return Response.text("invalid_blocks", 400)
        self._record(via="webhook", channel=channel, ts=self._ts(), text=payload.get("text", ""),
                     blocks=payload.get("blocks") or [])
        return Response.text("ok")

    def _web_api(self, req: Request, method: str) -> Response:
        auth = req.header("authorization")
        if not auth:
            return _api_error("not_authed")
        if auth != f"Bearer {BOT_TOKEN}":
            return _api_error("invalid_auth")
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            return _api_error("invalid_json")
        if not isinstance(body, dict):
            return _api_error("invalid_arguments")
        if method == "chat.postMessage":
            return self._post_message(body)
        if method == "chat.update":
            return self._update(body)
        return _api_error("unknown_method")

    def _post_message(self, body: dict) -> Response:
        channel = body.get("channel")
        if channel not in CHANNELS:
            return _api_error("channel_not_found")
        if not body.get("text") and not body.get("blocks"):
            return _api_error("no_text")
        if body.get("blocks") and block_problems(body["blocks"]):
            return _api_error("invalid_blocks")
        thread_ts = body.get("thread_ts") or None
        message = self._record(via="web_api", channel=channel, ts=self._ts(), thread_ts=thread_ts,
                               text=body.get("text", ""), blocks=body.get("blocks") or [], bot_id="B0SANDBOT")
        return Response.json({"ok": True, "channel": channel, "ts": message["ts"],
                              "message": {"type": "message", "subtype": "bot_message", "bot_id": "B0SANDBOT",
                                          "text": message["text"], "ts": message["ts"],
                                          **({"thread_ts": thread_ts} if thread_ts else {}),
                                          **({"blocks": message["blocks"]} if message["blocks"] else {})}})

    def _update(self, body: dict) -> Response:
        message = self.find(body.get("channel", ""), body.get("ts", ""))
        if message is None:
            return _api_error("message_not_found")
        if body.get("blocks") and block_problems(body["blocks"]):
            return _api_error("invalid_blocks")
        with self._lock:
            message["text"] = body.get("text", message["text"])
            if "blocks" in body:
                message["blocks"] = body["blocks"] or []
            message["edited"] = time.time()
        return Response.json({"ok": True, "channel": message["channel"], "ts": message["ts"], "text": message["text"]})

    def _response_url(self, req: Request, token: str) -> Response:
        """A response_url answers for 30 minutes, at most 5 times (api.slack.com/interactivity/handling)."""
        with self._lock:
            origin = self._responses.get(token)
            if origin is None or origin["uses"] >= 5 or time.time() - origin["at"] > 1800:
                return Response.json({"ok": False, "error": "expired_url"}, 404)
            origin["uses"] += 1
        try:
            body = json.loads(req.body)
        except ValueError:
            return Response.json({"ok": False, "error": "invalid_payload"}, 400)
        if body.get("blocks") and block_problems(body["blocks"]):
            return Response.json({"ok": False, "error": "invalid_blocks"}, 400)
        if body.get("replace_original"):
            message = self.find(origin["channel"], origin["ts"])
            if message is not None:
                with self._lock:
                    message["text"] = body.get("text", message["text"])
                    message["blocks"] = body.get("blocks", message["blocks"])
                    message["edited"] = time.time()
        elif body.get("response_type") != "in_channel":  # ephemeral: only the presser sees it
            self._record(via="response_url", channel=origin["channel"], ts=self._ts(),
                         thread_ts=origin["thread_ts"], text=body.get("text", ""), blocks=body.get("blocks") or [],
                         ephemeral=True, user=origin["user"])
        else:
            self._record(via="response_url", channel=origin["channel"], ts=self._ts(), thread_ts=origin["thread_ts"],
                         text=body.get("text", ""), blocks=body.get("blocks") or [])
        return Response.json({"ok": True})

    # -- a person pressing a button (a control of the sandbox) -----------------------------------
    def press(self, req: Request) -> Response:
        """POST /_sandbox/slack/press {"user": "U0SANDSAM", "action": "approve" | "decline", "ts": "<message
        ts>"?, "age_seconds": 0?}: Slack's block_actions request for that press, signed as Slack
        signs it, sent to the app's Request URL (the intake). Without `ts`, the latest message with
        that button. Answers with what the intake answered."""
        data = req.json() or {}
        user, action = data.get("user"), data.get("action")
        if user not in USERS or action not in ACTION_IDS:
            return Response.json(
                {"message": f"give user (one of {sorted(USERS)}) and action (approve or decline)"}, 422
            )
        if not self.interactions_url or not self.signing_secret:
            return Response.json({"message": "the sandbox has no interactions URL or signing secret configured"}, 409)
        message, button = self._button(ACTION_IDS[action], data.get("ts"))
        if message is None:
            return Response.json({"message": f"no message with a {action} button"}, 404)
        body = urlencode({"payload": json.dumps(self.payload(user, message, button))})
        timestamp = str(int(time.time() - float(data.get("age_seconds") or 0)))
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
                   "X-Slack-Signature": sign(self.signing_secret, timestamp, body.encode())}
        try:
            answer = httpx.post(self.interactions_url, content=body, headers=headers, timeout=5)
        except httpx.HTTPError as exc:
            return Response.json({"message": f"the Request URL did not answer: {type(exc).__name__}"}, 502)
        return Response.json({"status": answer.status_code, "body": answer.text[:2000], "ts": message["ts"]})

    def _button(self, action_id: str, ts: str | None) -> tuple[dict | None, dict | None]:
        with self._lock:
            candidates = [
                m for m in reversed(self.messages) if not m.get("ephemeral") and (ts is None or m["ts"] == ts)
            ]
        for message in candidates:
            for block in message["blocks"]:
                for element in block.get("elements") or [] if block.get("type") == "actions" else []:
                    if element.get("action_id") == action_id:
                        return message, {**element, "block_id": block.get("block_id", "actions")}
        return None, None

    def payload(self, user: str, message: dict, button: dict) -> dict:
        """A block_actions payload as Slack sends it for a button press in a message."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._responses[token] = {"channel": message["channel"], "ts": message["ts"],
                                      "thread_ts": message["thread_ts"], "user": user, "uses": 0, "at": time.time()}
        return {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "sandbox"},
            "user": {"id": user, "username": USERS[user], "name": USERS[user], "team_id": TEAM},
            "api_app_id": "A0SANDAPP",
            "token": "deprecated-verification-token",
            "trigger_id": f"{time.time():.0f}.sandbox",
            "container": {
                "type": "message",
                "message_ts": message["ts"],
                "channel_id": message["channel"],
                "is_ephemeral": False,
                **({"thread_ts": message["thread_ts"]} if message["thread_ts"] else {}),
            },
            "channel": {"id": message["channel"], "name": CHANNELS[message["channel"]]},
            "message": {
                "type": "message",
                "ts": message["ts"],
                "text": message["text"],
                "blocks": message["blocks"],
                **({"thread_ts": message["thread_ts"]} if message["thread_ts"] else {}),
            },
            "response_url": f"{self.base_url}/slack/actions/{token}",
            "actions": [
                {
                    "type": "button",
                    "action_id": button["action_id"],
                    "block_id": button["block_id"],
                    "value": button.get("value", ""),
                    "text": button["text"],
                    "style": button.get("style"),
                    "action_ts": f"{time.time():.6f}",
                }
            ],
        }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature: v0= + hex HMAC-SHA256 of "v0:{timestamp}:{body}" with the signing secret."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def _api_error(error: str) -> Response:
    return Response.json({"ok": False, "error": error})
