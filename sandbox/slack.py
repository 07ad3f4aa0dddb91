"""Slack as the runbooks meet it: incoming webhooks, the Web API methods a Slack app uses
(chat.postMessage, chat.update, views.open), interaction `response_url`s, and a person pressing a
button, typing a slash command or sending a modal.

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
USERS = {"U0SANDSAM": "sam", "U0SANDTESS": "tess", "U0SANDRITA": "rita", "U0SANDOLA": "ola", "U0SANDMAL": "mallory",
         "U0SANDKIM": "kim", "U0SANDLEE": "lee", "U0SANDANA": "ana", "U0SANDIVY": "ivy"}
ACTION_IDS = {"approve": "runbooks_approve", "decline": "runbooks_decline", "acknowledge": "runbooks_ack",
              "resolve": "runbooks_resolve"}
TRIGGER_SECONDS = 3.0  # a trigger_id opens one view, within 3 s (api.slack.com/interactivity/handling#modal_responses)


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
        self.commands_url: str | None = None  # the /incident command's Request URL (the intake's /slack/commands)
        self.messages: list[dict] = []
        self.views: list[dict] = []  # modals opened: {"id", "user", "view", "opened_at", "closed"}
        self._triggers: dict[str, dict] = {}  # trigger_id -> {"user", "at", "used"}
        self._responses: dict[str, dict] = {}  # response_url token -> {channel, ts, user, uses}
        self._lock = threading.Lock()
        self._clock = itertools.count(1)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()
            self._responses.clear()
            self.views.clear()
            self._triggers.clear()

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
        if method == "views.open":
            return self._open_view(body)
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

    def _open_view(self, body: dict) -> Response:
        """views.open: a trigger_id opens one view, within 3 s of the interaction that carried it."""
        with self._lock:
            trigger = self._triggers.get(str(body.get("trigger_id", "")))
            if trigger is None:
                return _api_error("invalid_trigger_id")
            if trigger["used"]:
                return _api_error("exchanged_trigger_id")
            if time.time() - trigger["at"] > TRIGGER_SECONDS:
                return _api_error("expired_trigger_id")
            view = body.get("view")
            problems = view_problems(view)
            if problems:
                return Response.json({"ok": False, "error": "invalid_arguments", "response_metadata":
                                      {"messages": problems}})
            trigger["used"] = True
            opened = {"id": f"V0SAND{len(self.views) + 1:04d}", "user": trigger["user"], "view": view,
                      "opened_at": time.time(), "closed": False}
            self.views.append(opened)
        return Response.json({"ok": True, "view": {"id": opened["id"], **view}})

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
        """POST /_sandbox/slack/press {"user": "U0SANDSAM", "action": "approve" | "decline" | "acknowledge" |
        "resolve", "ts": "<message ts>"?, "age_seconds": 0?}: Slack's block_actions request for that
        press, signed as Slack signs it, sent to the app's Request URL (the intake). Without `ts`, the
        latest message with that button. Answers with what the intake answered."""
        data = req.json() or {}
        user, action = data.get("user"), data.get("action")
        if user not in USERS or action not in ACTION_IDS:
            return Response.json(
                {"message": f"give user (one of {sorted(USERS)}) and action (one of {sorted(ACTION_IDS)})"}, 422
            )
        message, button = self._button(ACTION_IDS[action], data.get("ts"))
        if message is None:
            return Response.json({"message": f"no message with a {action} button"}, 404)
        body = urlencode({"payload": json.dumps(self.payload(user, message, button))})
        sent = self._send(self.interactions_url, body, float(data.get("age_seconds") or 0))
        if isinstance(sent, Response):
            return sent
        return Response.json({"status": sent[0], "body": sent[1][:2000], "ts": message["ts"]})

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
        trigger_id = self._trigger(user)
        with self._lock:
            self._responses[token] = {"channel": message["channel"], "ts": message["ts"],
                                      "thread_ts": message["thread_ts"], "user": user, "uses": 0, "at": time.time()}
        return {
            "type": "block_actions",
            "team": {"id": TEAM, "domain": "sandbox"},
            "user": {"id": user, "username": USERS[user], "name": USERS[user], "team_id": TEAM},
            "api_app_id": "A0SANDAPP",
            "token": "deprecated-verification-token",
            "trigger_id": trigger_id,
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


    def _trigger(self, user: str) -> str:
        trigger_id = f"{time.time():.0f}.{secrets.token_hex(8)}"
        with self._lock:
            self._triggers[trigger_id] = {"user": user, "at": time.time(), "used": False}
        return trigger_id

    def _send(self, url: str | None, body: str, age_seconds: float) -> tuple[int, str] | Response:
        """A signed form POST to the app, as Slack sends one; the app's status and body."""
        if not url or not self.signing_secret:
            return Response.json({"message": "the sandbox has no Request URL or signing secret configured"}, 409)
        timestamp = str(int(time.time() - age_seconds))
        headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": timestamp,
                   "X-Slack-Signature": sign(self.signing_secret, timestamp, body.encode())}
        try:
            answer = httpx.post(url, content=body, headers=headers, timeout=5)
        except httpx.HTTPError as exc:
            return Response.json({"message": f"the Request URL did not answer: {type(exc).__name__}"}, 502)
        return answer.status_code, answer.text

    # -- a person typing a slash command (a control of the sandbox) ------------------------------
    def command(self, req: Request) -> Response:
        """POST /_sandbox/slack/command {"user": "U0SANDSAM", "text": "declare api service-down P1",
        "channel": "C0SANDINC"?, "command": "/incident"?, "age_seconds": 0?}: Slack's slash-command
        request (form-encoded, signed) to the command's Request URL. The app's immediate answer
        is shown to the typist only (recorded as an ephemeral message), as are its later
        answers through the request's response_url."""
        data = req.json() or {}
        user, text = data.get("user"), data.get("text")
        channel = data.get("channel") or "C0SANDINC"
        if user not in USERS or not isinstance(text, str) or channel not in CHANNELS:
            return Response.json({"message": f"give user (one of {sorted(USERS)}), text, and a channel of "
                                             f"{sorted(CHANNELS)}"}, 422)
        form = self.command_form(user, text, channel, data.get("command") or "/incident")
        sent = self._send(self.commands_url, urlencode(form), float(data.get("age_seconds") or 0))
        if isinstance(sent, Response):
            return sent
        status, body = sent
        if status == 200 and body:
            try:
                shown = json.loads(body)
            except ValueError:
                shown = {"text": body}
            self._record(via="command", channel=channel, ts=self._ts(), text=str(shown.get("text", "")),
                         blocks=shown.get("blocks") or [], ephemeral=shown.get("response_type") != "in_channel",
                         user=user)
        return Response.json({"status": status, "body": body[:2000]})

    def command_form(self, user: str, text: str, channel: str = "C0SANDINC", command: str = "/incident") -> dict:
        """The form fields of Slack's slash-command request, with a response_url that answers here."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._responses[token] = {"channel": channel, "ts": None, "thread_ts": None, "user": user, "uses": 0,
                                      "at": time.time()}
        return {"token": "deprecated-verification-token", "team_id": TEAM, "team_domain": "sandbox",
                "channel_id": channel, "channel_name": CHANNELS[channel], "user_id": user, "user_name": USERS[user],
                "command": command, "text": text, "api_app_id": "A0SANDAPP", "is_enterprise_install": "false",
                "response_url": f"{self.base_url}/slack/actions/{token}", "trigger_id": self._trigger(user)}

    # -- a person sending a modal (a control of the sandbox) -------------------------------------
    def submit(self, req: Request) -> Response:
        """POST /_sandbox/slack/submit {"user": "U0SANDSAM", "values": {"<block_id>": {"<action_id>":
        "text"}}, "view_id": optional (else the user's latest open view)}: Slack's view_submission
        to the Request URL. The modal closes unless the app answers `response_action: errors`."""
        data = req.json() or {}
        user = data.get("user")
        with self._lock:
            opened = [v for v in self.views if v["user"] == user and not v["closed"]
                      and (not data.get("view_id") or v["id"] == data["view_id"])]
        if not opened:
            return Response.json({"message": f"{user} has no open view"}, 404)
        view = opened[-1]
        values = {block: {action: {"type": "plain_text_input", "value": value} for action, value in fields.items()}
                  for block, fields in (data.get("values") or {}).items()}
        payload = {"type": "view_submission", "team": {"id": TEAM, "domain": "sandbox"},
                   "user": {"id": user, "username": USERS.get(user, ""), "name": USERS.get(user, ""), "team_id": TEAM},
                   "api_app_id": "A0SANDAPP", "token": "deprecated-verification-token",
                   "trigger_id": self._trigger(user),
                   "view": {**view["view"], "id": view["id"], "team_id": TEAM, "state": {"values": values},
                            "hash": secrets.token_hex(6), "app_id": "A0SANDAPP", "bot_id": "B0SANDBOT"},
                   "response_urls": []}
        sent = self._send(self.interactions_url, urlencode({"payload": json.dumps(payload)}),
                          float(data.get("age_seconds") or 0))
        if isinstance(sent, Response):
            return sent
        status, body = sent
        errors = _form_errors(body) if status == 200 else None
        if status == 200 and not errors:
            with self._lock:
                view["closed"] = True
        return Response.json({"status": status, "body": body[:2000], "errors": errors, "closed": view["closed"]})


def _form_errors(body: str) -> dict | None:
    """The app's `response_action: errors` answer to a view submission, if that is what it is."""
    try:
        answer = json.loads(body) if body else None
    except ValueError:
        return None
    return answer.get("errors") if isinstance(answer, dict) and answer.get("response_action") == "errors" else None


def view_problems(view: Any) -> list[str]:
    """What breaks a modal's documented limits (api.slack.com/reference/surfaces/views)."""
    if not isinstance(view, dict) or view.get("type") != "modal":
        return ["view must be an object of type modal"]
    problems = []
    for key, limit, required in (("title", 24, True), ("submit", 24, False), ("close", 24, False)):
        part = view.get(key)
        if part is None and not required:
            continue
        if not isinstance(part, dict) or part.get("type") != "plain_text" or not 0 < len(part.get("text", "")) <= limit:
            problems.append(f"{key} must be plain_text of 1 to {limit} characters")
    if len(str(view.get("callback_id", ""))) > 255 or len(str(view.get("private_metadata", ""))) > 3000:
        problems.append("callback_id is at most 255 characters, private_metadata 3000")
    blocks = view.get("blocks")
    if not isinstance(blocks, list) or not 0 < len(blocks) <= 100:
        return problems + ["blocks must hold 1 to 100 blocks"]
    inputs = [b for b in blocks if isinstance(b, dict) and b.get("type") == "input"]
    if inputs and "submit" not in view:
        problems.append("a view with input blocks needs submit")
    for block in inputs:
        label = block.get("label") or {}
        if label.get("type") != "plain_text" or not 0 < len(label.get("text", "")) <= 2000:
            problems.append("an input's label must be plain_text of 1 to 2000 characters")
        if not isinstance(block.get("element"), dict) or not block["element"].get("action_id"):
            problems.append("an input needs an element with an action_id")
    problems += block_problems([b for b in blocks if isinstance(b, dict) and b.get("type") != "input"])
    return problems


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """Slack's v0 signature: v0= + hex HMAC-SHA256 of "v0:{timestamp}:{body}" with the signing secret."""
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def _api_error(error: str) -> Response:
    return Response.json({"ok": False, "error": error})
