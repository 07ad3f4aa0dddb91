"""The whole incident from Slack: the `/incident` slash command on the intake.

    POST /slack/commands    Slack's form-encoded slash-command request (the app's command URL)

Verified exactly like `/slack/interactions` (v0 signature, 5-minute window, replay cache):
unsigned, wrongly signed or stale requests get 401 and change nothing. Every command is
answered 200 at once (an ephemeral "on it", or the usage for a command that does not parse)
and does its work right after; the outcome comes back through the request's `response_url`,
seen only by the person who typed it. What the command changed is told in the incident's
thread, its issue and its timeline, as when it is done from the CLI.

    /incident declare <service> <scenario> [P0-P3] [env=<name>] [summary]
    /incident status [id]
    /incident ack <id>
    /incident resolve <id> <how it was resolved>
    /incident severity <id> <P0-P3>
    /incident role <id> <commander|comms|owner|scribe> <@someone>
    /incident note <id> <text>
    /incident cancel <id> <reason>
    /incident summary <id> sent

Who may do what comes from the incident's environment's config: anyone the config knows (a
handle in `roles.slack_ids` with this member ID, or an approver's `slack_user`) may declare,
acknowledge and write notes; the incident's commander (as handed over, else the rota's) and
the approvers for its severity may also resolve, cancel, hand roles over and set the severity;
the Communications lead, the commander and those approvers may say the 24-hour summary was sent.
A refusal is ephemeral and written to the incident's timeline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import redis.asyncio as aioredis
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deployments.guards import ReplayCache
from deployments.prefect_api import PrefectApi, explain
from deployments.slack_interactions import verified_body
from incidents.alerts import SCENARIOS, Alert, RunRequest, declared
from incidents.config_people import INCIDENT_ROLES, ROLE_TITLES
from incidents.errors import RunbookError
from incidents.models import Severity
from incidents.store import StoreError

if TYPE_CHECKING:  # for the annotations only: the store is imported where it is built
    from incidents.config import EnvironmentConfig
    from incidents.models import Incident
    from incidents.store_protocol import Records

log = logging.getLogger("runbooks.slack")
COMMAND = "/incident"
USAGE = (f"`{COMMAND} declare <service> <scenario> [P0-P3] [env=<name>] [summary]` · `{COMMAND} status [id]` · "
         f"`{COMMAND} ack <id>` · `{COMMAND} resolve <id> <how>` · `{COMMAND} severity <id> <P0-P3>` · "
         f"`{COMMAND} role <id> <{'|'.join(INCIDENT_ROLES)}> <@someone>` · `{COMMAND} note <id> <text>` · "
         f"`{COMMAND} cancel <id> <reason>` · `{COMMAND} summary <id> sent`")
# verbs any member may use; the rest are for these incident roles' holders and the severity's approvers
MEMBER_VERBS = frozenset({"declare", "ack", "note"})
VERB_ROLES = {"resolve": ("commander",), "severity": ("commander",), "role": ("commander",),
              "cancel": ("commander",), "summary": ("comms", "commander")}
LEAD_VERBS = frozenset(VERB_ROLES)
_ID = re.compile(r"^#?([1-9][0-9]{0,11})$")
_MENTION = re.compile(r"^<@([UW][A-Z0-9]{2,20})(\|[^>]*)?>$")

Declare = Callable[[Alert, RunRequest], Awaitable[dict[str, Any]]]


class CommandError(RunbookError, ValueError):
    """A command that does not parse, or that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Command:
    verb: str
    incident_id: int | None = None
    words: tuple[str, ...] = ()  # the verb's other arguments, in order
    text: str = ""  # the free text at the end (summary, note, reason)


@dataclass(frozen=True)
class Invocation:
    """Who typed the command, where, and where to answer."""
    user: str
    user_name: str
    channel: str
    response_url: str


def _incident_id(word: str | None, verb: str) -> int:
    match = _ID.match(word or "")
    if not match:
        raise CommandError(f"`{COMMAND} {verb}` needs the incident's id (the thread's messages show it)")
    return int(match[1])


def parse(text: str) -> Command:
    """The command's text, checked: CommandError with what to write instead."""
    words = text.split()
    if not words or words[0].lower() == "help":
        raise CommandError(USAGE)
    verb, rest = words[0].lower(), words[1:]
    if verb == "declare":
        return _parse_declare(rest)
    if verb == "status":
        return Command(verb, _incident_id(rest[0], verb) if rest else None)
    if verb not in MEMBER_VERBS | LEAD_VERBS:
        raise CommandError(f"unknown command `{verb[:30]}`. {USAGE}")
    incident_id = _incident_id(rest[0] if rest else None, verb)
    rest = rest[1:]
    if verb == "ack":
        return Command(verb, incident_id)
    if verb == "severity":
        if len(rest) != 1 or rest[0].upper() not in Severity.__members__:
            raise CommandError(f"`{COMMAND} severity <id> <P0-P3>`")
        return Command(verb, incident_id, (rest[0].upper(),))
    if verb == "summary":
        if [w.lower() for w in rest] != ["sent"]:
            raise CommandError(f"`{COMMAND} summary <id> sent`: say that the 24-hour summary went to stakeholders")
        return Command(verb, incident_id)
    if verb == "role":
        if len(rest) != 2 or rest[0].lower() not in INCIDENT_ROLES:
            raise CommandError(f"`{COMMAND} role <id> <{'|'.join(INCIDENT_ROLES)}> <@someone>`")
        return Command(verb, incident_id, (rest[0].lower(), rest[1]))
    if not rest:
        raise CommandError(f"`{COMMAND} {verb} <id>` needs its text: "
                           + {"resolve": "how it was resolved", "note": "the note", "cancel": "why"}[verb])
    return Command(verb, incident_id, text=" ".join(rest)[:1000])


def _parse_declare(rest: list[str]) -> Command:
    if len(rest) < 2 or rest[1] not in SCENARIOS:
        raise CommandError(f"`{COMMAND} declare <service> <scenario> [P0-P3] [env=<name>] [summary]`; scenarios: "
                           f"{', '.join(SCENARIOS)}")
    service, scenario, rest = rest[0], rest[1], rest[2:]
    severity = environment = ""
    while rest and (rest[0].upper() in Severity.__members__ or rest[0].startswith("env=")):
        if rest[0].startswith("env="):
            environment = rest.pop(0)[4:]
        else:
            severity = rest.pop(0).upper()
    return Command("declare", None, (service, scenario, severity, environment), " ".join(rest)[:500])


@dataclass(frozen=True)
class Caller:
    """A Slack member as the config knows them."""
    name: str  # how the timeline names them: the approver's name, else their handle
    handle: str | None
    approver_for: tuple[str, ...]  # the severities they may approve

    def may(self, verb: str, severity: str, holders: dict[str, str]) -> bool:
        """`holders`: who holds each incident role (role -> handle)."""
        if verb in MEMBER_VERBS:
            return True
        return any(self.handle == holders.get(role) for role in VERB_ROLES.get(verb, ())) \
            or severity in self.approver_for


def caller_in(config: EnvironmentConfig, user: str) -> Caller | None:
    """The member `user` in an environment's config: None when it does not know them."""
    handle = config.roles.handle_of(user)
    approver = config.approval.slack_approver(user)
    if handle is None and approver is None:
        return None
    return Caller(approver.name if approver else str(handle), handle,
                  tuple(approver.severities) if approver else ())


def environments_of(config_file: Any, channel: str) -> list[str]:
    """The environments whose incident (or security) channel this is."""
    return [name for name, env in config_file.environments.items()
            if channel and channel in (env.slack.channel, env.slack.security_channel)]


class SlackCommands:
    """The `/incident` command's work, after its 200: `declare` hands a declared incident to
    the intake (correlation, one run per incident); the rest act on the incident store, the
    runbooks' own steps and Prefect."""

    def __init__(self, prefect: PrefectApi, declare: Declare):
        self.prefect = prefect
        self.declare = declare

    async def run(self, command: Command, who: Invocation) -> None:
        try:
            if command.verb == "declare":
                reply = await self.declared(command, who)
            else:
                reply = await run_in_threadpool(on_incident, self.prefect, command, who)
        except (CommandError, StoreError) as exc:  # StoreError: e.g. "no incident 42"
            reply = str(exc)
        except Exception as exc:  # the person must hear of it (logged with its traceback)
            log.exception("/incident %s by %s failed", command.verb, who.user)
            reply = f"`{COMMAND} {command.verb}` failed ({type(exc).__name__}: {str(exc)[:200]}); see the intake's log."
        await run_in_threadpool(_answer, who.response_url, reply)

    # -- declare ---------------------------------------------------------------------------
    async def declared(self, command: Command, who: Invocation) -> str:
        from incidents.config import load_config

        service, scenario, severity, environment = command.words
        config_file = await run_in_threadpool(load_config)
        environment = environment or _one_environment(environments_of(config_file, who.channel), who.channel)
        config = config_file.environments.get(environment)
        if config is None:
            raise CommandError(f"environment {environment!r} is not configured "
                               f"(known: {', '.join(sorted(config_file.environments))})")
        caller = caller_in(config, who.user)
        if caller is None:
            log.warning("/incident declare by %s (%s) refused: not in the %s config", who.user, who.user_name,
                        environment)
            return f"You are not in the {environment} config's roles or approvers; nothing was declared."
        alert, request = declared(environment, service, scenario, severity or None, command.text, caller.name,
                                  datetime.now(timezone.utc))
        try:
            outcome = await self.declare(alert, request)
        except Exception as exc:  # noqa: BLE001 - Unavailable, DeploymentMissing, Redis: nothing was opened
            log.error("/incident declare %s %s: %s", service, scenario, exc)
            return f"Not declared: {exc}. Nothing was opened; try again in a moment."
        return _declared_reply(outcome, service, scenario, environment)


def on_incident(prefect: PrefectApi, command: Command, who: Invocation) -> str:
    """Every command but declare: on one incident (or, `status` alone, the open ones)."""
    from incidents.followups import RunbookStore

    store = RunbookStore()
    if command.incident_id is None:
        return _open_incidents(store)
    if command.verb == "status":
        return _status(store, store.get(command.incident_id))
    allowed = authorise(store, command, who)
    if isinstance(allowed, str):
        return allowed
    return act(prefect, command, *allowed)


def act(prefect: PrefectApi, command: Command, incident: Incident, config: EnvironmentConfig, by: str) -> str:
    """Carry out a command `by` may give; what changed, in a sentence."""
    from tasks.context import RunContext
    from tasks.duties import DutyError, summary_sent
    from tasks.roles import RoleError, add_note, hand_over, set_severity
    from tasks.watch import acknowledge

    ctx = RunContext(incident.environment, incident.service, config)
    try:
        if command.verb == "ack":
            if acknowledge(incident.environment, incident.id, by):
                return f"Incident {incident.id} acknowledged by {by}; escalation stops."
            if incident.resolved_at is not None:
                return f"Incident {incident.id} is resolved already; nothing to acknowledge."
            return f"Incident {incident.id} was acknowledged already (by {incident.acknowledged_by or '-'})."
        if command.verb == "note":
            return add_note(ctx, incident.id, command.text, by)
        if command.verb == "severity":
            return set_severity(ctx, incident.id, command.words[0], by)
        if command.verb == "role":
            return hand_over(ctx, incident.id, command.words[0], handle_in(config, command.words[1]), by)
        if command.verb == "summary":
            return summary_sent(ctx, incident.id, by)
    except (RoleError, DutyError) as exc:
        raise CommandError(str(exc)) from None
    if command.verb == "resolve":
        return start_resolve(prefect, incident, by, command.text)
    return cancel_incident_runs(prefect, incident, by, command.text)


def authorise(store: Records, command: Command, who: Invocation) -> tuple[Incident, EnvironmentConfig, str] | str:
    """(incident, its environment's config, the caller's name) when `who` may do `command` on
    its incident; else the refusal (written to the incident's timeline) to tell them."""
    from incidents.config import load_environment

    if command.incident_id is None:
        return f"Which incident? /incident {command.verb} <number>"
    incident = store.get(command.incident_id)  # StoreError (no such incident) is said as it is
    config = load_environment(incident.environment)
    caller = caller_in(config, who.user)
    assigned = store.assigned_roles(incident.id)
    holders = {role: config.roles.holder(role, assigned) for role in INCIDENT_ROLES}
    if caller is None or not caller.may(command.verb, incident.severity.value, holders):
        return _refused(store, incident, command, who, caller)
    return incident, config, caller.name


def _one_environment(candidates: list[str], channel: str) -> str:
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CommandError(f"this channel ({channel}) is no environment's incident channel: add env=<name>")
    raise CommandError(f"this channel is the incident channel of {', '.join(candidates)}: add env=<name>")


def handle_in(config: EnvironmentConfig, who: str) -> str:
    """A role's new holder as typed: a Slack mention (`<@U…|name>`, a member the config knows) or
    a handle (`@name`)."""
    mention = _MENTION.match(who)
    if not mention:
        return who
    handle = config.roles.handle_of(mention[1])
    if handle is None:
        raise CommandError(f"<@{mention[1]}> has no handle in the config's roles.slack_ids; name their handle instead")
    return handle


def _declared_reply(outcome: dict[str, Any], service: str, scenario: str, environment: str) -> str:
    if outcome["unknown"]:
        return f"Not declared: {outcome['unknown'][0]}."
    if outcome["started"]:
        done = outcome["started"][0]
        return (f"Incident {done['incident_id']} declared: {scenario} for {service} in {environment}; its runbook "
                f"run {done['flow_run_id']} has started. The thread in this channel follows it.")
    if outcome["joined"]:
        done = outcome["joined"][0]
        also = f" and started its {scenario} checks" if done.get("flow_run_id") else ""
        return (f"{service} in {environment} already has open incident {done['incident_id']} "
                f"({done['severity']}): your declaration joined it{also}. Its thread is in this channel.")
    return "This was declared a moment ago already; nothing new was opened."


def _open_incidents(store: Records) -> str:
    incidents = store.list(limit=10, open_only=True)
    if not incidents:
        return "No open incidents."
    return "Open incidents:\n" + "\n".join(
        f"• {i.id} {i.severity.value} {i.environment}/{i.service} {i.status.value}: {i.title[:80]}" for i in incidents)


def _status(store: Records, incident: Incident) -> str:
    from incidents.config_people import ROLE_TITLES

    assigned = store.assigned_roles(incident.id)
    roles = ", ".join(f"{ROLE_TITLES[r]} {h}" for r, h in assigned.items()) or "as in the rota"
    state = f"resolved {incident.resolved_at:%Y-%m-%d %H:%M} UTC" if incident.resolved_at else incident.status.value
    ack = f"acknowledged by {incident.acknowledged_by}" if incident.acknowledged_by else "not acknowledged"
    return (f"Incident {incident.id} · {incident.severity.value} · {incident.environment}/{incident.service} · "
            f"{state} · {ack}\n{incident.title[:200]}\nRoles: {roles}\nIssue: {incident.issue_url or '-'}")


def _refused(store: Records, incident: Incident, command: Command, who: Invocation, caller: Caller | None) -> str:
    from incidents.models import EventKind

    holders = " or ".join(f"the incident's {ROLE_TITLES[r]}" for r in VERB_ROLES.get(command.verb, ()))
    why = (f"not in the {incident.environment} config's roles or approvers" if caller is None
           else f"only {holders} or an approver for {incident.severity.value} may")
    store.add_event(incident.id, "Slack", EventKind.COMMAND_REFUSED,
                    f"{COMMAND} {command.verb} by Slack member {who.user} ({caller.name if caller else who.user_name}) "
                    f"was refused: {why}")
    return f"Refused: {why} `{COMMAND} {command.verb}` incident {incident.id}; nothing changed."


def start_resolve(prefect: PrefectApi, incident: Incident, by: str, note: str) -> str:
    """Resolve through the `resolve-incident/<env>` deployment, as `runbooks resolve` does: its
    worker posts the Resolution, closes the issue and starts the post-mortem."""
    import uuid

    from integrations.errors import IntegrationError

    if incident.resolved_at is not None:
        raise CommandError(f"incident {incident.id} is already resolved ({incident.resolution or 'no note'})")
    deployment = f"resolve-incident/{incident.environment}"
    try:
        dep = prefect.call("GET", f"/deployments/name/{deployment}").json()
        run = prefect.call("POST", f"/deployments/{dep['id']}/create_flow_run", json={
            "parameters": {"incident_id": incident.id, "resolved_by": by, "note": note,
                           "environment": incident.environment},
            "idempotency_key": f"runbooks-slack-{uuid.uuid4()}", "tags": ["slack"]}).json()
    except IntegrationError as exc:
        raise CommandError(f"not resolved: {explain(exc)}") from None
    return (f"Resolving incident {incident.id} through {deployment} (run {run['name']}): the Resolution "
            f"comes to the thread and the issue, then the post-mortem.")


def cancel_incident_runs(prefect: PrefectApi, incident: Incident, by: str, reason: str) -> str:
    """Cancel the incident's runbook runs that have not ended (its own and any that joined)."""
    from deployments.run_control import FINAL, CancelRefused, cancel_run
    from incidents.followups import RunbookStore

    store = RunbookStore()
    ids = dict.fromkeys([incident.flow_run_id, *(a.flow_run_id for a in store.approvals(incident.id))])
    cancelled = []
    for run_id in filter(None, ids):
        run = prefect.flow_run(run_id)
        if run["state"]["type"] not in FINAL:
            try:
                cancel_run(prefect, store, run, by, reason)
            except CancelRefused as exc:
                raise CommandError(f"Prefect refused to cancel {run['name']}: {exc}") from None
            cancelled.append(run["name"])
    if not cancelled:
        raise CommandError(f"incident {incident.id} has no runbook run that has not ended; nothing to cancel")
    return f"Cancelling {', '.join(cancelled)} of incident {incident.id}; the thread will say what had been done."


def _answer(response_url: str, text: str) -> None:
    from integrations.errors import IntegrationError
    from integrations.slack import respond

    if not response_url.startswith(("https://", "http://")):
        log.warning("/incident answered without a response_url: %s", text[:200])
        return
    try:
        respond(response_url, {"response_type": "ephemeral", "text": text[:3000]})
    except IntegrationError as exc:
        log.warning("Slack response_url not reached: %s", exc)


def routes(prefect: PrefectApi, redis: Callable[[], aioredis.Redis], declare: Declare) -> list[Route]:
    seen = ReplayCache(redis, "runbooks:slack:seen:")
    commands = SlackCommands(prefect, declare)

    async def command(request: Request) -> Response:
        body = await verified_body(request, seen, "command")
        if isinstance(body, Response):
            return body
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if form.get("command") != COMMAND:
            return JSONResponse({"response_type": "ephemeral", "text": f"This app answers {COMMAND} only."})
        try:
            parsed = parse(form.get("text", ""))
        except CommandError as exc:
            return JSONResponse({"response_type": "ephemeral", "text": str(exc)})
        who = Invocation(form.get("user_id", ""), form.get("user_name", ""), form.get("channel_id", ""),
                         form.get("response_url", ""))
        log.info("/incident %s by %s in %s", parsed.verb, who.user, who.channel)
        return JSONResponse({"response_type": "ephemeral", "text": f"⏳ `{COMMAND} {form.get('text', '')[:200]}`"},
                            background=BackgroundTask(commands.run, parsed, who))

    return [Route("/slack/commands", command, methods=["POST"])]
