"""PagerDuty's side of a page, back in the incident: its v3 webhooks on the intake.

    POST /pagerduty/webhooks    a v3 webhook subscription's deliveries

Each delivery is verified with the subscription's secret (RUNBOOKS_PAGERDUTY_WEBHOOK_SECRET):
`X-PagerDuty-Signature` holds one or more `v1=<hex HMAC-SHA256 of the raw body>`, and one must
match. Unsigned or wrongly signed deliveries get 401 and change nothing.

`incident.acknowledged` for an alert this project triggered (its `incident_key` is the
dedup_key we sent) acknowledges the incident here: the escalation stops and the thread says who.
`incident.resolved` is recorded and also stops the escalation; the incident itself is resolved
here by its runbook or by a person (`runbooks resolve`), who knows whether the service is back.
Other event types and alerts this project did not send are answered 200 and ignored, so that
PagerDuty does not retry them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os

import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from deployments.guards import TooLarge, read_body
from incidents.models import EventKind

log = logging.getLogger("runbooks.pagerduty")
SECRET_ENV = "RUNBOOKS_PAGERDUTY_WEBHOOK_SECRET"
# what PagerDuty told us, when the incident was acknowledged here already (or it is a resolve)
_TOLD_KIND = {"acknowledged": EventKind.PAGER_ACKNOWLEDGED, "resolved": EventKind.PAGER_RESOLVED}
MAX_BODY_BYTES = 256 * 1024


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Agent(_Part):
    summary: str | None = None  # the person, as PagerDuty names them


class IncidentData(_Part):
    incident_key: str | None = None  # for an incident: the dedup_key of the alert that opened it


class WebhookEvent(_Part):
    """The part of a v3 webhook delivery's `event` this project reads; the rest is ignored."""

    event_type: str | None = None  # incident.acknowledged, incident.resolved, ...
    agent: Agent | None = None
    data: IncidentData | None = None

    @classmethod
    def parse(cls, body: bytes) -> WebhookEvent:
        """The delivery's event; a ValueError says why a body is not one."""
        try:
            delivery = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"body is not JSON: {exc}") from None
        if not isinstance(delivery, dict) or not isinstance(delivery.get("event") or {}, dict):
            raise ValueError("body is not a webhook event")
        try:
            return cls.model_validate(delivery.get("event") or {})
        except ValidationError as exc:
            raise ValueError(f"body is not a webhook event: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") \
                from None


def verify(secret: str, header: str, body: bytes) -> bool:
    expected = ("v1=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()).encode()
    # bytes: a header with characters outside ASCII is a wrong signature, not an error
    return any(hmac.compare_digest(expected, part.strip().encode("utf-8", "surrogateescape"))
               for part in header.split(",") if part.strip())


def routes() -> list[Route]:
    async def webhook(request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except TooLarge:
            return _json(413, {"error": "delivery too large"})
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            log.error("a PagerDuty webhook arrived but %s is not set: refused", SECRET_ENV)
            return _json(401, {"error": "PagerDuty webhooks are not configured here"})
        if not verify(secret, request.headers.get("x-pagerduty-signature", ""), body):
            log.warning("PagerDuty webhook refused: signature missing or wrong")
            return _json(401, {"error": "signature missing or wrong"})
        try:
            event = WebhookEvent.parse(body)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        return _json(200, await run_in_threadpool(handle_event, event))

    return [Route("/pagerduty/webhooks", webhook, methods=["POST"])]


def handle_event(event: WebhookEvent) -> dict[str, object]:
    """What a delivery changes here; the answer's body says what was done or why it was ignored."""
    from incidents import templates
    from incidents.config import ConfigError, load_environment
    from incidents.store import IncidentStore, StoreError
    from tasks.context import RunContext
    from tasks.notify import refresh_issue, send_slack
    from tasks.paging import incident_of_key
    from tasks.timeline import record

    kind = event.event_type
    named = incident_of_key((event.data.incident_key or "") if event.data else "")
    if kind not in ("incident.acknowledged", "incident.resolved") or named is None:
        return {"ignored": kind or "no event_type"}
    environment, incident_id = named
    agent = ((event.agent.summary if event.agent else None) or "someone")[:100]
    who = f"{agent} (PagerDuty)"
    store = IncidentStore()
    try:
        incident = store.get(incident_id)
        config = load_environment(environment)
    except (StoreError, ConfigError) as exc:
        log.warning("PagerDuty %s for incident %s ignored: %s", kind, incident_id, exc)
        return {"ignored": "unknown incident"}
    if incident.environment != environment:
        return {"ignored": "environment does not match"}
    ctx = RunContext(environment, incident.service, config)
    acknowledged = store.acknowledge(incident_id, who)
    verb = "acknowledged" if kind == "incident.acknowledged" else "resolved"
    record(ctx, incident_id, who, EventKind.ACKNOWLEDGED if acknowledged else _TOLD_KIND[verb],
           f"{verb.capitalize()} in PagerDuty by {agent}" + ("; escalation stops" if acknowledged else ""))
    if acknowledged:
        refresh_issue(ctx, incident_id)
    if acknowledged or verb == "resolved":
        note = (f"👀 {verb.capitalize()} in PagerDuty by {agent}"
                + ("; escalation stops." if acknowledged else ".")
                + (" The incident stays open here until its runbook or a person resolves it." if verb == "resolved"
                   else ""))
        send_slack(ctx, incident_id, templates.status_update(incident, incident.status.value,
                                                             incident.eta or "being assessed",
                                                             incident.impact or "being assessed", note))
    return {"incident": incident_id, verb: True, "escalation_stopped": acknowledged}


def _json(status: int, data: dict[str, object]) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")
