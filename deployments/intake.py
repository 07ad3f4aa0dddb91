"""The alert intake: webhooks in, one scenario run per firing alert out.

    POST /alerts/alertmanager   Alertmanager webhook (version 4)
    POST /alerts/grafana        Grafana unified alerting (HMAC signature checked when configured)
    POST /alerts                a generic JSON alert (see incidents/alerts.py: parse_generic)
    GET  /healthz               alive (Redis answers): the liveness probe
    GET  /readyz                ready (Redis answers, Prefect accepts the credentials): the readiness probe
    GET  /metrics               Prometheus metrics (deployments/intake_metrics.py; docs/observability.md)
    GET  /approvals/<token>     the approval page (see deployments/approval_page.py); POST answers it
    POST /slack/interactions    buttons pressed, forms sent in Slack (deployments/slack_interactions.py)
    POST /slack/commands        the /incident slash command (deployments/slack_commands.py)
    POST /pagerduty/webhooks    PagerDuty's v3 webhooks: acknowledged/resolved there (deployments/pagerduty_webhooks.py)

Every alert POST needs `Authorization: Bearer $RUNBOOKS_ALERT_TOKEN` (Slack's and PagerDuty's
requests are signed instead; the approval page checks each approver's own credential). An
alert loses its sender's labels (`intake.ignore_labels`), is routed by the config's `routing`,
checked against the config (unknown environment or service: 422 and a Slack notice),
deduplicated in Redis on fingerprint + startsAt, and correlated: it joins the open incident of
its correlation key, or opens it and starts one run of `<scenario>/<environment>` under the
alert's key as Prefect's idempotency key. A resolved alert never starts anything; see the
docs/alerts.md, "One outage, one incident", for correlation, flapping and withdrawal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import logging
import sys
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import orjson
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as HttpRoute

from deployments import log_format
from deployments.approval_page import routes as approval_routes
from deployments.guards import TooLarge, read_body
from deployments.intake_metrics import IntakeMetrics, Timed
from deployments.intake_records import (
    known_services,
    note_resolved,
    notify_channel,
    notify_unmatched,
    open_or_find,
    severity_of,
)
from deployments.intake_settings import IntakeSettings, settings_from_env
from deployments.pagerduty_webhooks import routes as pagerduty_routes
from deployments.prefect_api import AsyncPrefectApi, PrefectApi, explain
from deployments.slack_commands import routes as slack_command_routes
from deployments.slack_interactions import routes as slack_routes
from incidents import templates
from incidents.alerts import (
    Alert,
    AlertParameter,
    BadPayload,
    RunRequest,
    parse_alertmanager,
    parse_generic,
    parse_grafana,
    route,
    verify_grafana_signature,
)
from incidents.errors import RunbookError
from incidents.followups import RunbookStore
from incidents.models import Severity
from incidents.store import IncidentStore, StoreError
from integrations.errors import IntegrationError, NotFound
from integrations.http import RetryPolicy
from tasks.approval import ApprovalInput
from tasks.correlation import join, withdraw_quiet

log = logging.getLogger("runbooks.intake")
CREATE_RETRY = RetryPolicy(attempts=4, backoff=0.2, max_wait=5.0)  # a busy Prefect API: 0.2, 0.4, 0.8 s
KEY_PREFIX = "runbooks:alert:"


class Unavailable(RunbookError):
    """Something the intake depends on (Redis, Prefect, the store) failed: 503, so the sender retries."""

    transient = True

    def __init__(self, message: str, dependency: str = "prefect"):
        super().__init__(message)
        self.dependency = dependency


class DeploymentMissing(Unavailable):
    """Routing names a Prefect deployment that does not exist (not deployed yet, or deleted):
    503, so the sender retries until it is there."""

    def __init__(self, deployment: str):
        super().__init__(f"routing names deployment {deployment!r}, which does not exist in Prefect")
        self.deployment = deployment


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status, media_type="application/json")


class AlertIntake:
    """The alert intake's handlers and the connections they share (opened in `lifespan`)."""

    def __init__(self, settings: IntakeSettings, metrics: IntakeMetrics | None = None):
        self.settings = settings
        self.metrics = metrics or IntakeMetrics()
        self.state: dict[str, Any] = {}
        self.expected_auth = f"Bearer {settings.token}".encode()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette):
        self.state["redis"] = aioredis.Redis.from_url(
            self.settings.redis_url, socket_timeout=2, socket_connect_timeout=2
        )
        self.state["prefect"] = AsyncPrefectApi(self.settings.prefect_api_url)
        # A few run creations at a time: an alert storm must not turn into a write storm on
        # the Prefect database (SQLite answers 503 to that), and duplicates never wait here.
        self.state["creating"] = asyncio.Semaphore(4)
        self.state["known"] = (
            self.settings.known_services if self.settings.known_services is not None else known_services()
        )
        self.state["timers"] = set()
        yield
        for task in self.state["timers"]:
            task.cancel()
        await self.state["redis"].aclose()
        await self.state["prefect"].aclose()

    def redis(self) -> aioredis.Redis:
        """The Redis connection the intake's routes share (opened in `lifespan`)."""
        return self.state["redis"]

    async def read(self, request: Request) -> bytes | Response:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, self.expected_auth):
            return _json({"error": "missing or wrong bearer token"}, 401)
        try:
            return await read_body(request, self.settings.max_body_bytes)
        except TooLarge as exc:
            return _json({"error": str(exc)}, 413)

    async def receive(self, request: Request, parse, source: str, body: bytes | None = None) -> Response:
        if body is None:
            got = await self.read(request)
            if isinstance(got, Response):
                self.metrics.refused(source)
                return got
            body = got
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            self.metrics.refused(source)
            return _json({"error": f"body is not JSON: {exc}"}, 400)
        try:
            alerts = parse(payload)
        except BadPayload as exc:
            self.metrics.refused(source)
            return _json({"error": str(exc)}, 422)
        try:
            outcome = await self.handle(alerts)
        except aioredis.RedisError as exc:
            log.error("intake could not reach Redis: %s", exc)
            self.metrics.failed(source, "redis", len(alerts))
            return _json({"error": f"Redis: {exc}"}, 503)
        except Unavailable as exc:
            log.error("intake could not process %d alerts: %s", len(alerts), exc)
            self.metrics.failed(source, exc.dependency, len(alerts))
            return _json({"error": str(exc)}, 503)
        self.metrics.counted(source, outcome, len(alerts))
        if outcome["unknown"]:  # not retried by the sender (4xx); the reason says what to add to the config
            return _json({"error": "; ".join(outcome["unknown"]), **outcome}, 422)
        return _json(outcome)

    async def handle(self, alerts: list[Alert]) -> dict[str, Any]:
        outcome: dict[str, Any] = {"received": len(alerts), "started": [], "joined": [], "duplicates": 0,
                                   "unmatched": 0, "resolved": 0, "unknown": [], "errors": []}
        for alert in alerts:
            alert = alert.without_labels(self.settings.ignore_labels)
            request = route(alert, self.settings.routes)
            if request is None:
                outcome["unmatched"] += 1
                await self.unmatched(alert)
                continue
            await self.handle_routed(alert, request, outcome)
        return outcome

    async def handle_routed(self, alert: Alert, request: RunRequest, outcome: dict[str, Any]) -> None:
        """One alert whose runbook is known: checked against the config, deduplicated and
        correlated; what became of it is added to `outcome`. Also what `/incident declare` does."""
        problem = await self.unknown(alert, request)
        if problem:
            outcome["unknown"].append(problem)
            return
        if alert.status == "resolved":
            outcome["resolved"] += await self.resolved(alert, request)
            return
        if not await self.claim(alert):
            outcome["duplicates"] += 1
            return
        try:
            done = await self.correlate(alert, request)
        except DeploymentMissing as exc:  # told in Slack; the 503 makes the sender retry until it exists
            await self.release(alert)
            await self.report_missing(exc, alert, request)
            raise
        except BaseException:
            await self.release(alert)  # the sender's retry tries again (the idempotency key keeps it to one run)
            raise
        await self.state["redis"].set(
            KEY_PREFIX + alert.key,
            (done.get("flow_run_id") or f"joined:{done['incident_id']}").encode(),
            ex=self.settings.dedup_seconds,
        )
        outcome["joined" if done.get("joined") else "started"].append(done)

    async def declare(self, alert: Alert, request: RunRequest) -> dict[str, Any]:
        """A declared incident (`/incident declare`), handled exactly as an alert for it."""
        outcome: dict[str, Any] = {"received": 1, "started": [], "joined": [], "duplicates": 0, "unmatched": 0,
                                   "resolved": 0, "unknown": [], "errors": []}
        await self.handle_routed(alert, request, outcome)
        self.metrics.counted("slack", outcome, 1)
        return outcome

    async def claim(self, alert: Alert) -> bool:
        """False for an alert already handled (a resend). A claim that never became a run (the
        intake died, Redis blinked) expires after `claim_seconds`, and a delivery that finds it
        meanwhile goes ahead too: Prefect's idempotency key makes both one run."""
        key = KEY_PREFIX + alert.key
        try:
            if await self.state["redis"].set(key, b"starting", nx=True, ex=self.settings.claim_seconds):
                return True
            held = await self.state["redis"].get(key)
            if held in (b"starting", None):
                return True
            if not await self.ended(held.decode()):
                return False
            log.info("alert %s still fires after its incident ended: a new occurrence", alert.fingerprint)
            await self.state["redis"].set(key, b"starting", ex=self.settings.claim_seconds)
            return True
        except aioredis.RedisError as exc:
            raise Unavailable(f"Redis: {exc}", "redis") from None

    async def ended(self, held: str) -> bool:
        """Whether the incident a handled alert went to (its run's, or `joined:<id>`) has been
        resolved since: the same alert firing again is then a new occurrence, not a resend."""
        def lookup() -> bool:
            store = IncidentStore()
            incident = (store.get(int(held.split(":", 1)[1])) if held.startswith("joined:")
                        else store.incident_for_run(held))
            return incident is not None and incident.resolved_at is not None
        try:
            return await run_in_threadpool(lookup)
        except StoreError as exc:
            raise Unavailable(str(exc), "store") from None

    async def release(self, alert: Alert) -> None:
        with contextlib.suppress(aioredis.RedisError):
            if await self.state["redis"].get(KEY_PREFIX + alert.key) == b"starting":
                await self.state["redis"].delete(KEY_PREFIX + alert.key)

    async def unknown(self, alert: Alert, request: RunRequest) -> str | None:
        """Why the config cannot take this alert (unknown environment or service), reported in
        Slack once an hour per service; None when it can."""
        known = self.state["known"]
        if request.environment not in known:
            problem = (f"alert {alert.labels.get('alertname', 'unnamed')} for unknown environment "
                       f"{request.environment!r} (configured: {', '.join(sorted(known))})")
        elif request.service not in known[request.environment]:
            problem = (f"alert {alert.labels.get('alertname', 'unnamed')} for unknown service {request.service!r} in "
                       f"{request.environment} - add it to the config (known: "
                       f"{', '.join(sorted(known[request.environment]))})")
        else:
            return None
        log.warning("%s", problem)
        try:
            first = await self.state["redis"].set(f"runbooks:unknown:{request.environment}:{request.service}", b"1",
                                             nx=True, ex=3600)
        except aioredis.RedisError:
            first = True
        if first and self.settings.notify_unmatched and alert.source != "slack":  # a typo in a declare: only
            await run_in_threadpool(notify_channel, request.environment,  # its typist is told (ephemeral)
                                    f"⚠️ ALERT NOT STARTED\n{templates.slack_text(problem, 500)}")
        return problem

    async def correlate(self, alert: Alert, request: RunRequest) -> dict[str, Any]:
        """Open the incident for this outage and start its run, or join the one already open."""
        dep_id = await self.deployment_id(request.deployment)
        parameter = alert.as_parameter(request.correlation_key)
        try:
            incident, ctx = await run_in_threadpool(open_or_find, alert, request, parameter)
        except StoreError as exc:
            raise Unavailable(str(exc), "store") from None
        if incident.created or incident.flow_run_id is None:
            # a new incident, or one whose run is not started yet (another delivery is starting
            # it, or the intake died in between): the incident's own alert starts its scenario,
            # under that alert's idempotency key, so all of these make one run
            opener = replace(request, scenario=incident.scenario)
            run_id = await self.start_run(
                await self.deployment_id(opener.deployment), incident.alert or parameter, opener,
                incident.severity, incident.id
            )
            await run_in_threadpool(ctx.store().set_runbook_run, incident.id, run_id)
            if incident.created:
                return {"deployment": request.deployment, "flow_run_id": run_id, "fingerprint": alert.fingerprint,
                        "incident_id": incident.id}
        joined = await run_in_threadpool(join, ctx, incident, parameter, severity_of(request), alert.source)
        log.info("alert %s (%s) joined incident %s (%s)", alert.fingerprint, alert.labels.get("alertname"),
                 incident.id, joined.seen)
        done = {"joined": True, "incident_id": incident.id, "fingerprint": alert.fingerprint, "seen": joined.seen,
                "severity": joined.incident.severity.value}
        if request.scenario != incident.scenario and await self.first_of_scenario(incident.id, request.scenario):
            # another symptom: its runbook's checks add their findings to the incident (the
            # incident's own runbook keeps the service; see tasks/lifecycle.py)
            done["flow_run_id"] = await self.start_run(dep_id, parameter, request, joined.incident.severity,
                                                       incident.id)
        return done

    async def first_of_scenario(self, incident_id: int, scenario: str) -> bool:
        try:
            return bool(await self.state["redis"].set(f"runbooks:scenario:{incident_id}:{scenario}", b"1", nx=True,
                                                 ex=self.settings.dedup_seconds))
        except aioredis.RedisError as exc:
            raise Unavailable(f"Redis: {exc}", "redis") from None

    async def deployment_id(self, name: str) -> str:
        if name not in self.settings.deployment_ids:
            try:
                response = await self.state["prefect"].call("GET", f"/deployments/name/{name}", ok=(404,))
            except IntegrationError as exc:
                raise Unavailable(explain(exc)) from None
            if response.status_code == 404:
                raise DeploymentMissing(name)
            self.settings.deployment_ids[name] = response.json()["id"]
        return self.settings.deployment_ids[name]

    async def report_missing(self, exc: DeploymentMissing, alert: Alert, request: RunRequest) -> None:
        """An alert that cannot start its runbook is not dropped in silence: the incident channel
        hears of it (once an hour per deployment), and the sender keeps retrying (503)."""
        log.error("alert %s (%s): %s", alert.fingerprint, alert.labels.get("alertname"), exc)
        try:
            first = await self.state["redis"].set(f"runbooks:missing:{exc.deployment}", b"1", nx=True, ex=3600)
        except aioredis.RedisError:
            first = True
        if first and self.settings.notify_unmatched:
            await run_in_threadpool(
                notify_channel, request.environment,
                f"⚠️ ALERT NOT STARTED\n{templates.slack_text(alert.labels.get('alertname', 'unnamed'))} for "
                f"{templates.slack_text(request.service)}: {templates.slack_text(str(exc), 300)}. The alert sender "
                f"is answered 503 and retries until the deployment exists (`prefect deploy`).")

    async def start_run(self, dep_id: str, alert: AlertParameter, request: RunRequest, severity: Severity,
                        incident_id: int) -> str:
        """One run per alert and incident: deliveries of the same alert for the same incident make
        one run (the idempotency key), and the alert firing on after that incident ended starts
        a new one for the new incident. The alert goes to the run as the JSON it came as."""
        parameters: dict[str, Any] = {"service": request.service, "environment": request.environment,
                                      "alert": alert.as_dict(), "severity": severity.value}
        fingerprint = alert.fingerprint or ""
        key = f"{fingerprint}:{alert.starts_at}:{incident_id}"
        name = f"{alert.labels.get('alertname', 'alert')}-{fingerprint[:8]}".lower()
        body = {"parameters": parameters, "idempotency_key": f"alert:{key}", "name": name,
                "tags": ["alert", alert.source or "generic"]}
        async with self.state["creating"]:
            try:
                response = await self.create_run(dep_id, request.deployment, body)
            except NotFound:  # the deployment was deleted (or re-created under a new id): look it up again
                self.settings.deployment_ids.pop(request.deployment, None)
                try:
                    response = await self.create_run(await self.deployment_id(request.deployment),
                                                     request.deployment, body)
                except NotFound:
                    self.settings.deployment_ids.pop(request.deployment, None)
                    raise DeploymentMissing(request.deployment) from None
                except IntegrationError as exc:
                    raise Unavailable(explain(exc)) from None
            except IntegrationError as exc:
                raise Unavailable(explain(exc)) from None
        run_id = response.json()["id"]
        log.info("alert %s (%s) started %s run %s", fingerprint, alert.labels.get("alertname"),
                 request.deployment, run_id, extra={"incident": incident_id, "run": run_id})
        return run_id

    async def create_run(self, dep_id: str, deployment: str, body: dict[str, Any]) -> Any:
        return await self.state["prefect"].call("POST", f"/deployments/{dep_id}/create_flow_run",
                                                what=f"Prefect API, creating a run of {deployment}",
                                                retry=CREATE_RETRY, json=body)

    async def unmatched(self, alert: Alert) -> None:
        first = await self.state["redis"].set(f"runbooks:unmatched:{alert.fingerprint}", b"1", nx=True, ex=86400)
        if first:
            log.warning("alert %s matched no routing rule: labels %s", alert.fingerprint, alert.labels)
            if self.settings.notify_unmatched:
                await run_in_threadpool(notify_unmatched, alert)

    async def resolved(self, alert: Alert, request: RunRequest) -> int:
        """Noted on the open incident of its outage; the withdrawal waits out the grace."""
        try:
            noted = await run_in_threadpool(note_resolved, alert, request, self.settings.resolve_grace_seconds)
        except StoreError as exc:
            raise Unavailable(str(exc), "store") from None
        if noted:
            task = asyncio.get_running_loop().create_task(self.withdraw_later(request.environment))
            self.state["timers"].add(task)
            task.add_done_callback(self.state["timers"].discard)
        return int(noted)

    async def withdraw_later(self, environment: str) -> None:
        """After the grace: withdraw what stayed quiet. The incident watch does the same every
        minute, so a restart of the intake loses no withdrawal."""
        await asyncio.sleep(self.settings.resolve_grace_seconds + 0.5)

        prefect = PrefectApi(self.settings.prefect_api_url)

        def resume(run_id: str, answer: ApprovalInput) -> bool:
            return prefect.resume(run_id, answer.model_dump()).status_code < 300

        try:
            done = await run_in_threadpool(withdraw_quiet, RunbookStore(), environment,
                                           self.settings.resolve_grace_seconds, datetime.now(timezone.utc), resume)
        except StoreError as exc:
            log.warning("withdrawal check failed (the incident watch will retry): %s", exc)
            return
        if done:
            log.info("withdrew approvals %s: their alerts stayed resolved for %g s", done,
                     self.settings.resolve_grace_seconds)

    async def alertmanager(self, request: Request) -> Response:
        return await self.receive(request, parse_alertmanager, "alertmanager")

    async def grafana(self, request: Request) -> Response:
        got = await self.read(request)
        if isinstance(got, Response):
            self.metrics.refused("grafana")
            return got
        if self.settings.grafana_secret:
            try:
                verify_grafana_signature(self.settings.grafana_secret, got,
                                         request.headers.get("x-grafana-alerting-signature"),
                                         request.headers.get("x-grafana-alerting-signature-timestamp"),
                                         use_timestamp=self.settings.grafana_use_timestamp)
            except PermissionError as exc:
                self.metrics.refused("grafana")
                return _json({"error": f"Grafana signature refused: {exc}"}, 401)
        return await self.receive(request, parse_grafana, "grafana", got)

    async def generic(self, request: Request) -> Response:
        return await self.receive(request, parse_generic, "generic")

    async def healthz(self, request: Request) -> Response:
        try:
            await self.state["redis"].ping()
        except aioredis.RedisError as exc:
            return _json({"ok": False, "redis": str(exc)}, 503)
        return _json({"ok": True, "routes": len(self.settings.routes)})

    async def readyz(self, request: Request) -> Response:
        """Ready to start runbooks: Redis answers and Prefect does not refuse the intake's
        credentials (a Kubernetes readiness probe: a pod with a wrong PREFECT_API_KEY gets no
        alerts). A Prefect that is down or busy is every replica's problem, not this pod's: the
        pod stays ready and answers each alert 503, so the sender retries."""
        try:
            await self.state["redis"].ping()
        except aioredis.RedisError as exc:
            return _json({"ok": False, "redis": str(exc)}, 503)
        try:
            await self.state["prefect"].call("POST", "/deployments/count", json={}, what="Prefect API readiness")
        except IntegrationError as exc:
            refused = exc.status in (401, 403)
            return _json({"ok": not refused, "prefect": explain(exc)}, 503 if refused else 200)
        return _json({"ok": True, "routes": len(self.settings.routes)})



def create_app(settings: IntakeSettings, metrics: IntakeMetrics | None = None) -> Starlette:
    intake = AlertIntake(settings, metrics)
    return Starlette(routes=[
        HttpRoute("/metrics", intake.metrics.serve, methods=["GET"]),
        HttpRoute("/alerts/alertmanager", intake.alertmanager, methods=["POST"]),
        HttpRoute("/alerts/grafana", intake.grafana, methods=["POST"]),
        HttpRoute("/alerts", intake.generic, methods=["POST"]),
        HttpRoute("/healthz", intake.healthz, methods=["GET"]),
        HttpRoute("/readyz", intake.readyz, methods=["GET"]),
        *approval_routes(PrefectApi(settings.prefect_api_url), intake.redis),
        *slack_routes(PrefectApi(settings.prefect_api_url), intake.redis),
        *slack_command_routes(PrefectApi(settings.prefect_api_url), intake.redis, intake.declare),
        *pagerduty_routes(),
    ], lifespan=intake.lifespan, middleware=[Middleware(Timed, metrics=intake.metrics)])


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m deployments.intake", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    args = parser.parse_args(argv)
    # force: importing Prefect has configured the root logger already (WARNING), and without it
    # the intake's INFO lines (a run started, an alert joined) were never written
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout,
                        force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect API call is noise here
    try:
        log_format.apply("intake")
    except log_format.LogFormatError as exc:
        parser.error(str(exc))
    uvicorn.run(create_app(settings_from_env()), host=args.host, port=args.port, log_level="warning",
                access_log=False, loop="uvloop", http="httptools", backlog=4096)


if __name__ == "__main__":
    main()
