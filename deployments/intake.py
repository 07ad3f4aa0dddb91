"""The alert intake: webhooks in, one scenario run per firing alert out.

    POST /alerts/alertmanager   Alertmanager webhook (version 4)
    POST /alerts/grafana        Grafana unified alerting (HMAC signature checked when configured)
    POST /alerts                a generic JSON alert (see incidents/alerts.py: parse_generic)
    GET  /healthz
    GET  /approvals/<id>        the approval page (see deployments/approval_page.py); POST answers it

Every POST needs `Authorization: Bearer $RUNBOOKS_ALERT_TOKEN`. A firing alert is routed by
the config's `routing` rules and deduplicated in Redis on fingerprint + startsAt, then started
as a flow run of `<scenario>/<environment>` with the same key as Prefect's idempotency key,
so a resend never adds a run. A resolved alert never starts anything: it posts a Status
Update to its incident and withdraws a pending approval.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from deployments.approval_page import routes as approval_routes
from deployments.prefect_api import auth_headers
from incidents.alerts import WITHDRAWN_REASON, Alert, BadPayload, Route, parse_alertmanager, parse_generic, parse_grafana, route, \
    verify_grafana_signature

log = logging.getLogger("runbooks.intake")
KEY_PREFIX = "runbooks:alert:"


@dataclass
class IntakeSettings:
    token: str
    routes: list[Route]
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefect_api_url: str = "http://127.0.0.1:4200/api"
    grafana_secret: str | None = None
    grafana_use_timestamp: bool = False
    max_body_bytes: int = 1 << 20
    dedup_seconds: int = 7 * 24 * 3600
    notify_unmatched: bool = True
    deployment_ids: dict[str, str] = field(default_factory=dict)


class Unavailable(Exception):
    """Something the intake depends on (Redis, Prefect) failed: 503, so the sender retries."""


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


def create_app(settings: IntakeSettings) -> Starlette:
    state: dict[str, Any] = {}
    expected_auth = f"Bearer {settings.token}".encode()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state["redis"] = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        state["prefect"] = httpx.AsyncClient(base_url=settings.prefect_api_url.rstrip("/"), headers=auth_headers(),
                                             timeout=httpx.Timeout(10.0, connect=3.0))
        # A few run creations at a time: an alert storm must not turn into a write storm on
        # the Prefect database (SQLite answers 503 to that), and duplicates never wait here.
        state["creating"] = asyncio.Semaphore(4)
        yield
        await state["redis"].aclose()
        await state["prefect"].aclose()

    async def read(request: Request) -> bytes | Response:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, expected_auth):
            return _json({"error": "missing or wrong bearer token"}, 401)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return _json({"error": f"body larger than {settings.max_body_bytes} bytes"}, 413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                return _json({"error": f"body larger than {settings.max_body_bytes} bytes"}, 413)
        return body

    async def receive(request: Request, parse, body: bytes | None = None) -> Response:
        if body is None:
            got = await read(request)
            if isinstance(got, Response):
                return got
            body = got
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return _json({"error": f"body is not JSON: {exc}"}, 400)
        try:
            alerts = parse(payload)
        except BadPayload as exc:
            return _json({"error": str(exc)}, 422)
        try:
            outcome = await handle(alerts)
        except aioredis.RedisError as exc:
            log.error("intake could not reach Redis: %s", exc)
            return _json({"error": f"Redis: {exc}"}, 503)
        except Unavailable as exc:
            log.error("intake could not process %d alerts: %s", len(alerts), exc)
            return _json({"error": str(exc)}, 503)
        return _json(outcome)

    async def handle(alerts: list[Alert]) -> dict[str, Any]:
        outcome: dict[str, Any] = {"received": len(alerts), "started": [], "duplicates": 0, "unmatched": 0,
                                   "resolved": 0, "errors": []}
        for alert in alerts:
            if alert.status == "resolved":
                outcome["resolved"] += await resolved(alert)
                continue
            request = route(alert, settings.routes)
            if request is None:
                outcome["unmatched"] += 1
                await unmatched(alert)
                continue
            key = KEY_PREFIX + alert.key
            try:
                first = await state["redis"].set(key, b"starting", nx=True, ex=settings.dedup_seconds)
            except aioredis.RedisError as exc:
                raise Unavailable(f"Redis: {exc}") from None
            if not first:
                outcome["duplicates"] += 1
                continue
            try:
                run_id = await start_run(alert, request)
            except Unavailable:
                await state["redis"].delete(key)  # let the sender's retry try again
                raise
            except LookupError as exc:
                outcome["errors"].append(str(exc))
                await state["redis"].delete(key)
                log.error("%s", exc)
                continue
            await state["redis"].set(key, run_id.encode(), ex=settings.dedup_seconds)
            outcome["started"].append({"deployment": request.deployment, "flow_run_id": run_id,
                                       "fingerprint": alert.fingerprint})
        return outcome

    async def deployment_id(name: str) -> str:
        if name not in settings.deployment_ids:
            try:
                response = await state["prefect"].get(f"/deployments/name/{name}")
            except httpx.HTTPError as exc:
                raise Unavailable(f"Prefect API: {type(exc).__name__}: {exc}") from None
            if response.status_code == 404:
                raise LookupError(f"routing names deployment {name!r}, which does not exist")
            if response.status_code != 200:
                raise Unavailable(f"Prefect API answered {response.status_code} for deployment {name}")
            settings.deployment_ids[name] = response.json()["id"]
        return settings.deployment_ids[name]

    async def start_run(alert: Alert, request) -> str:
        dep_id = await deployment_id(request.deployment)
        parameters: dict[str, Any] = {"service": request.service, "environment": request.environment,
                                      "alert": alert.as_parameter()}
        if request.severity:
            parameters["severity"] = request.severity
        name = f"{alert.labels.get('alertname', 'alert')}-{alert.fingerprint[:8]}".lower()
        body = {"parameters": parameters, "idempotency_key": f"alert:{alert.key}", "name": name,
                "tags": ["alert", alert.source]}
        async with state["creating"]:
            for attempt in range(4):
                try:
                    response = await state["prefect"].post(f"/deployments/{dep_id}/create_flow_run", json=body)
                except httpx.HTTPError as exc:
                    response, error = None, f"{type(exc).__name__}: {exc}"
                else:
                    if response.status_code < 300 or not (response.status_code == 429 or response.status_code >= 500):
                        break
                    error = f"HTTP {response.status_code}"
                if attempt < 3:
                    await asyncio.sleep(0.2 * 2 ** attempt)
            if response is None:
                raise Unavailable(f"Prefect API: {error}")
        if response.status_code >= 300:
            raise Unavailable(f"Prefect API answered {response.status_code} creating a run of {request.deployment}: "
                              f"{response.text[:200]}")
        run_id = response.json()["id"]
        log.info("alert %s (%s) started %s run %s", alert.fingerprint, alert.labels.get("alertname"),
                 request.deployment, run_id)
        return run_id

    async def unmatched(alert: Alert) -> None:
        first = await state["redis"].set(f"runbooks:unmatched:{alert.fingerprint}", b"1", nx=True, ex=86400)
        if first:
            log.warning("alert %s matched no routing rule: labels %s", alert.fingerprint, alert.labels)
            if settings.notify_unmatched:
                await run_in_threadpool(_notify_unmatched, alert)

    async def resolved(alert: Alert) -> int:
        run_id = await state["redis"].get(KEY_PREFIX + alert.key)
        if not run_id or run_id == b"starting":
            return 0
        run_id = run_id.decode()
        withdrawn = False
        try:
            response = await state["prefect"].get(f"/flow_runs/{run_id}")
            if response.status_code == 200 and response.json()["state"]["type"] == "PAUSED":
                result = await state["prefect"].post(f"/flow_runs/{run_id}/resume", json={"run_input": {
                    "approve": False, "approver": f"{alert.source} (alert resolved)", "reason": WITHDRAWN_REASON}})
                withdrawn = result.status_code < 300 and result.json().get("status") == "ACCEPT"
        except httpx.HTTPError as exc:
            raise Unavailable(f"Prefect API: {exc}") from None
        await run_in_threadpool(_status_update, alert, withdrawn)
        return 1

    async def alertmanager(request: Request) -> Response:
        return await receive(request, parse_alertmanager)

    async def grafana(request: Request) -> Response:
        got = await read(request)
        if isinstance(got, Response):
            return got
        if settings.grafana_secret:
            try:
                verify_grafana_signature(settings.grafana_secret, got, request.headers.get("x-grafana-alerting-signature"),
                                         request.headers.get("x-grafana-alerting-signature-timestamp"),
                                         use_timestamp=settings.grafana_use_timestamp)
            except PermissionError as exc:
                return _json({"error": f"Grafana signature refused: {exc}"}, 401)
        return await receive(request, parse_grafana, got)

    async def generic(request: Request) -> Response:
        return await receive(request, parse_generic)

    async def healthz(request: Request) -> Response:
        try:
            await state["redis"].ping()
        except aioredis.RedisError as exc:
            return _json({"ok": False, "redis": str(exc)}, 503)
        return _json({"ok": True, "routes": len(settings.routes)})

    return Starlette(routes=[
        HttpRoute("/alerts/alertmanager", alertmanager, methods=["POST"]),
        HttpRoute("/alerts/grafana", grafana, methods=["POST"]),
        HttpRoute("/alerts", generic, methods=["POST"]),
        HttpRoute("/healthz", healthz, methods=["GET"]),
        *approval_routes(settings.prefect_api_url, auth_headers()),
    ], lifespan=lifespan)


def _notify_unmatched(alert: Alert) -> None:
    """Reported once: to the incident channel of the environment the alert names, if any."""
    from incidents.config import ConfigError, load_config
    from incidents.templates import slack_text
    from integrations.errors import IntegrationError
    from integrations.slack import SlackWebhook
    from tasks.context import SecretNotFound, resolve_secret

    try:
        envs = load_config().environments
        env = envs.get(alert.labels.get("environment", "")) or next(iter(envs.values()))
        with SlackWebhook(resolve_secret(env.slack.webhook_secret)) as slack:
            slack.post(f"⚠️ UNROUTED ALERT\n{slack_text(alert.labels.get('alertname', 'unnamed'))} matched no routing "
                       f"rule; labels: {slack_text(', '.join(f'{k}={v}' for k, v in sorted(alert.labels.items())), 500)}")
    except (ConfigError, IntegrationError, SecretNotFound, StopIteration) as exc:
        log.warning("unrouted alert not reported to Slack: %s", exc)


def _status_update(alert: Alert, withdrawn: bool) -> None:
    """A Status Update on the alert's incident (and its timeline) that the alert resolved."""
    from incidents import templates
    from incidents.config import ConfigError, load_environment
    from incidents.store import IncidentStore, StoreError
    from integrations.errors import IntegrationError
    from integrations.slack import SlackWebhook
    from tasks.context import SecretNotFound, resolve_secret

    try:
        store = IncidentStore()
        found = [i for i in store.list(limit=200, open_only=True) if i.dedup_key == f"alert:{alert.key}"]
        if not found:
            return
        incident = found[0]
        note = "The alert resolved at its source." + (" The pending approval was withdrawn: nothing was changed."
                                                      if withdrawn else "")
        store.add_event(incident.id, alert.source, "alert_resolved", note, {"withdrawn": withdrawn})
        env = load_environment(incident.environment)
        with SlackWebhook(resolve_secret(env.slack.webhook_secret)) as slack:
            slack.post(templates.status_update(incident, "Monitoring", "alert cleared; confirming",
                                               "Recovering", note))
    except (ConfigError, StoreError, IntegrationError, SecretNotFound) as exc:
        log.warning("status update for resolved alert %s not posted: %s", alert.fingerprint, exc)


def settings_from_env() -> IntakeSettings:
    from incidents.config import load_config

    token = os.environ.get("RUNBOOKS_ALERT_TOKEN")
    if not token:
        raise SystemExit("RUNBOOKS_ALERT_TOKEN is not set: the intake refuses to run without a token")
    return IntakeSettings(
        token=token, routes=list(load_config().routing),
        redis_url=os.environ.get("RUNBOOKS_REDIS_URL", "redis://127.0.0.1:6379/0"),
        prefect_api_url=os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api"),
        grafana_secret=os.environ.get("RUNBOOKS_GRAFANA_HMAC_SECRET") or None,
        grafana_use_timestamp=os.environ.get("RUNBOOKS_GRAFANA_SIGNATURE_TIMESTAMP", "") in ("1", "true", "yes"))


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m deployments.intake", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call is noise here
    uvicorn.run(create_app(settings_from_env()), host=args.host, port=args.port, log_level="warning",
                access_log=False, loop="uvloop", http="httptools", backlog=4096)


if __name__ == "__main__":
    main()
