"""PagerDuty as the runbooks meet it: the Events API v2 endpoint, and a person acknowledging or
resolving in PagerDuty, which PagerDuty reports through a signed v3 webhook.

Shapes per PagerDuty's documentation: `POST /v2/enqueue` takes `routing_key` (a service's
32-character integration key), `event_action` (trigger, acknowledge, resolve) and `dedup_key`
(at most 255 characters; required for acknowledge and resolve); a trigger needs `payload` with
`summary` (at most 1024), `source` and `severity` (critical, error, warning, info). An accepted
event is answered 202 `{"status": "success", "message": "Event processed", "dedup_key": ...}`, an
invalid one 400 `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}`
(developer.pagerduty.com/docs/events-api-v2/trigger-events). Events with the same routing key and
dedup_key are one alert: a trigger while it is open adds to it. Webhooks (v3) carry `event`
with `event_type` (incident.acknowledged, incident.resolved), `agent` and `data` (the incident,
with `incident_key` = the dedup_key), signed `X-PagerDuty-Signature: v1=<hex HMAC-SHA256 of the
body>` (developer.pagerduty.com/docs/webhooks/v3-overview, .../webhook-signatures).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from datetime import datetime, timezone

import httpx

from sandbox.http import Request, Response

ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")


def routing_key(name: str) -> str:
    """The sandbox's integration key for a PagerDuty service (32 characters, like PagerDuty's)."""
    return hashlib.sha256(f"sandbox-pagerduty-{name}".encode()).hexdigest()[:32]


def event_problems(event: object) -> list[str]:
    """What makes an event invalid per the Events API v2 documentation (empty: valid)."""
    if not isinstance(event, dict):
        return ["the event must be a JSON object"]
    problems = []
    key = event.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        problems.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = event.get("event_action")
    if action not in ACTIONS:
        problems.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not 0 < len(dedup) <= 255):
        problems.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and not dedup:
        problems.append("'dedup_key' is required for acknowledge and resolve")
    if action == "trigger":
        payload = event.get("payload")
        if not isinstance(payload, dict):
            problems.append("'payload' is missing or not an object")
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not 0 < len(summary) <= 1024:
                problems.append("'payload.summary' is required (at most 1024 characters)")
            if not isinstance(payload.get("source"), str) or not payload.get("source"):
                problems.append("'payload.source' is required")
            if payload.get("severity") not in SEVERITIES:
                problems.append("'payload.severity' must be one of critical, error, warning, info")
    return problems


class PagerDuty:
    def __init__(self, webhook_secret: str | None = None):
        self.webhook_secret = webhook_secret
        self.webhook_url: str | None = None  # the intake's /pagerduty/webhooks
        self.events: list[dict] = []
        self.alerts: dict[tuple[str, str], dict] = {}  # (routing key, dedup_key) -> status, summary, events
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self.events.clear()
            self.alerts.clear()

    def handle(self, req: Request) -> Response | None:
        if req.method == "POST" and req.path == "/pagerduty/v2/enqueue":
            return self._enqueue(req)
        return None

    def _enqueue(self, req: Request) -> Response:
        try:
            event = json.loads(req.body)
        except ValueError:
            return Response.json({"status": "invalid event", "message": "Event object is invalid",
                                  "errors": ["the body is not JSON"]}, 400)
        problems = event_problems(event)
        if problems:
            return Response.json({"status": "invalid event", "message": "Event object is invalid", "errors": problems},
                                 400)
        dedup = event.get("dedup_key") or secrets.token_hex(16)
        with self._lock:
            self.events.append({**event, "dedup_key": dedup, "received_at": time.time()})
            alert = self.alerts.get((event["routing_key"], dedup))
            action = event["event_action"]
            if action == "trigger" and (alert is None or alert["status"] == "resolved"):
                self.alerts[(event["routing_key"], dedup)] = {
                    "id": "Q" + secrets.token_hex(6).upper(), "status": "triggered", "dedup_key": dedup,
                    "summary": event["payload"]["summary"], "severity": event["payload"]["severity"], "events": 1}
            elif alert is not None:
                alert["events"] += 1
                if action != "trigger" and alert["status"] != "resolved":
                    alert["status"] = "acknowledged" if action == "acknowledge" else "resolved"
        return Response.json({"status": "success", "message": "Event processed", "dedup_key": dedup}, 202)

    def read_events(self, req: Request) -> Response:
        with self._lock:
            return Response.json(list(self.events))

    def read_alerts(self, req: Request) -> Response:
        with self._lock:
            return Response.json([{**a, "routing_key": k[0]} for k, a in self.alerts.items()])

    def person_acts(self, req: Request) -> Response:
        """POST /_sandbox/pagerduty/act {"dedup_key": ..., "action": "acknowledge" | "resolve", "user": "Ola"}:
        a person acknowledges (or resolves) the alert in PagerDuty; PagerDuty then sends its signed
        v3 webhook to the intake. Answers with what the intake answered."""
        data = req.json() or {}
        action, dedup, user = data.get("action"), data.get("dedup_key"), data.get("user") or "Ola Oncall"
        if action not in ("acknowledge", "resolve") or not isinstance(dedup, str):
            return Response.json({"message": "give dedup_key and action (acknowledge or resolve)"}, 422)
        with self._lock:
            alert = next((a for (k, d), a in self.alerts.items() if d == dedup), None)
            if alert is not None:
                alert["status"] = "acknowledged" if action == "acknowledge" else "resolved"
        if alert is None:
            return Response.json({"message": f"no PagerDuty alert with dedup_key {dedup}"}, 404)
        if not self.webhook_url or not self.webhook_secret:
            return Response.json({"message": "the sandbox has no webhook URL or secret configured"}, 409)
        body = json.dumps(self.webhook(alert, action, str(user)))
        signature = "v1=" + hmac.new(self.webhook_secret.encode(), body.encode(), hashlib.sha256).hexdigest()
        try:
            answer = httpx.post(self.webhook_url, content=body, timeout=5, headers={
                "Content-Type": "application/json", "X-PagerDuty-Signature": signature,
                "X-Webhook-Id": secrets.token_hex(8), "User-Agent": "PagerDuty-Webhook/V3.0"})
        except httpx.HTTPError as exc:
            return Response.json({"message": f"the webhook URL did not answer: {type(exc).__name__}"}, 502)
        return Response.json({"status": answer.status_code, "body": answer.text[:2000]})

    @staticmethod
    def webhook(alert: dict, action: str, user: str) -> dict:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        status = "acknowledged" if action == "acknowledge" else "resolved"
        return {"event": {
            "id": secrets.token_hex(13).upper(), "event_type": f"incident.{status}", "resource_type": "incident",
            "occurred_at": now,
            "agent": {"id": "PSANDUSR", "type": "user_reference", "summary": user,
                      "self": "https://api.pagerduty.com/users/PSANDUSR"},
            "client": None,
            "data": {"id": alert["id"], "type": "incident", "number": 1, "status": status,
                     "incident_key": alert["dedup_key"], "title": alert["summary"],
                     "self": f"https://api.pagerduty.com/incidents/{alert['id']}",
                     "html_url": f"https://sandbox.pagerduty.com/incidents/{alert['id']}",
                     "urgency": "high", "resolve_reason": None}}}
