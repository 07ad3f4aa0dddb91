"""`runbooks incidents | incident | ack | resolve | postmortem | metrics`: the incident record."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import TYPE_CHECKING

from deployments.cli_common import (
    OK,
    USAGE,
    CliError,
    actor_name,
    api,
    api_url,
    follow,
    open_store,
    store_failure,
)
from incidents.config import ConfigError
from incidents.config_people import ROLE_TITLES
from incidents.errors import RunbookError

if TYPE_CHECKING:  # for the annotations only: the store is imported where it is built
    from incidents.models import Incident
    from incidents.store_protocol import Records
    from tasks.context import RunContext


# -- incidents ---------------------------------------------------------------------------------------
def cmd_incidents(args: argparse.Namespace) -> int:
    store, StoreError = open_store()
    try:
        incidents = store.list(limit=args.limit, open_only=args.open)
    except StoreError as exc:
        raise store_failure(exc) from None
    if not incidents:
        print("no incidents" + (" open" if args.open else ""))
    for i in incidents:
        print(f"#{i.id:<5} {i.severity.value} {i.status.value:<13} {i.scenario:<18} {i.service}/{i.environment}  "
              f"opened {i.opened_at:%Y-%m-%d %H:%M}  {i.issue_url or ''}")
    return OK


def cmd_incident(args: argparse.Namespace) -> int:
    store, StoreError = open_store()
    try:
        incident = store.get(args.id)
        timeline = store.timeline(args.id)
    except StoreError as exc:
        raise store_failure(exc) from None
    print(f"incident #{incident.id}: {incident.title}")
    print(f"  {incident.severity.value} ({incident.severity.label}), {incident.status.value}, "
          f"{incident.service} in {incident.environment}, issue {incident.issue_url or '-'}")
    if incident.root_cause:
        print(f"  root cause: {incident.root_cause}")
    print("  roles: " + ", ".join(f"{ROLE_TITLES[role]} {holder}" for role, holder in _holders(store, incident)))
    print("timeline:")
    for event in timeline:
        print(f"  {event.at:%H:%M:%S}  {event.actor:<24.24} {event.kind:<20} {event.message}")
    return OK


def _holders(store: Records, incident: Incident) -> list[tuple[str, str]]:
    """Each incident role and who holds it: handed over, else the environment's rota."""
    from incidents.config import load_environment

    assigned = store.assigned_roles(incident.id)
    try:
        roles = load_environment(incident.environment).roles
    except (ConfigError, OSError):
        return [(role, assigned.get(role, "(the rota's: config not readable here)")) for role in ROLE_TITLES]
    return [(role, roles.holder(role, assigned)) for role in ROLE_TITLES]


def cmd_resolve(args: argparse.Namespace) -> int:
    """Through the `resolve-incident/<env>` deployment: its worker holds the secrets that post
    the Resolution and close the issue (a shell usually does not)."""
    store, StoreError = open_store()
    try:
        incident = store.get(args.id)
    except StoreError as exc:
        raise store_failure(exc) from None
    if incident.resolved_at is not None:
        raise CliError(f"incident #{args.id} is already resolved ({incident.resolution or 'no resolution noted'})")
    by, note = actor_name(args.by), args.note.strip()
    if not by or not note:
        raise CliError("say who resolves it (--by NAME) and how it was resolved (--note TEXT)", USAGE)
    deployment = f"resolve-incident/{incident.environment}"
    dep = api("GET", f"/deployments/name/{deployment}")
    run = api("POST", f"/deployments/{dep['id']}/create_flow_run", json={
        "parameters": {"incident_id": incident.id, "resolved_by": by, "note": note,
                       "environment": incident.environment},
        "idempotency_key": f"runbooks-cli-{uuid.uuid4()}"})
    print(f"resolving incident #{incident.id} through {deployment} run {run['name']}")
    code = follow(run["id"], args.timeout)
    if code != OK:
        return code
    print(f"incident #{incident.id} resolved by {by}")
    return OK


def _incident_context(store: Records, StoreError: type[RunbookError], incident_id: int) -> tuple[Incident, RunContext]:
    from tasks.context import RunContext

    try:
        incident = store.get(incident_id)
        return incident, RunContext.load(incident.environment, incident.service)
    except StoreError as exc:
        raise store_failure(exc) from None
    except ConfigError as exc:
        raise CliError(f"incident #{incident_id}: {exc}") from None


def cmd_role(args: argparse.Namespace) -> int:
    """Hand a role over: the timeline, the thread and the issue say who holds it now."""
    from tasks.roles import RoleError, hand_over

    store, StoreError = open_store()
    _, ctx = _incident_context(store, StoreError, args.id)
    try:
        print(hand_over(ctx, args.id, args.role, args.handle, actor_name(args.by)))
    except RoleError as exc:
        raise CliError(str(exc), USAGE) from None
    except StoreError as exc:
        raise store_failure(exc) from None
    return OK


def cmd_note(args: argparse.Namespace) -> int:
    from tasks.roles import RoleError, add_note

    store, StoreError = open_store()
    _, ctx = _incident_context(store, StoreError, args.id)
    try:
        print(add_note(ctx, args.id, " ".join(args.text), actor_name(args.by)))
    except RoleError as exc:
        raise CliError(str(exc), USAGE) from None
    except StoreError as exc:
        raise store_failure(exc) from None
    return OK


def cmd_summary(args: argparse.Namespace) -> int:
    """The Communications lead sent the 24-hour summary drafted in the thread: its duty is done."""
    from tasks.duties import DutyError, summary_sent

    store, StoreError = open_store()
    _, ctx = _incident_context(store, StoreError, args.id)
    try:
        print(summary_sent(ctx, args.id, actor_name(args.by)))
    except DutyError as exc:
        raise CliError(str(exc)) from None
    except StoreError as exc:
        raise store_failure(exc) from None
    return OK


def cmd_ack(args: argparse.Namespace) -> int:
    store, StoreError = open_store()
    try:
        incident = store.get(args.id)
        from tasks.watch import acknowledge

        acknowledged = acknowledge(incident.environment, args.id, actor_name(args.by))
        incident = store.get(args.id)
    except StoreError as exc:
        raise store_failure(exc) from None
    if acknowledged:
        print(f"incident #{args.id} acknowledged by {incident.acknowledged_by}; escalation stops")
        return OK
    if incident.resolved_at:
        raise CliError(f"incident #{args.id} is already resolved")
    print(f"incident #{args.id} was already acknowledged by {incident.acknowledged_by} at "
          f"{incident.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC")
    return OK


def cmd_postmortem(args: argparse.Namespace) -> int:
    store, StoreError = open_store()
    try:
        incident = store.get(args.id)
    except StoreError as exc:
        raise store_failure(exc) from None
    deployment = f"post-incident/{incident.environment}"
    dep = api("GET", f"/deployments/name/{deployment}")
    run = api("POST", f"/deployments/{dep['id']}/create_flow_run",
               json={"parameters": {"incident_id": incident.id, "environment": incident.environment},
                     "idempotency_key": f"runbooks-cli-{uuid.uuid4()}"})
    print(f"started {deployment} run {run['name']} for incident #{incident.id}")
    print(f"  the form (once the run waits for it): {api_url().removesuffix('/api')}/runs/flow-run/{run['id']}")
    return OK


def cmd_metrics(args: argparse.Namespace) -> int:
    from incidents.store import StoreError
    from incidents.success_metrics import trend_svg
    from tasks.metrics import measure

    try:
        metrics = measure(args.env)
    except StoreError as exc:
        raise store_failure(exc) from None
    except ConfigError as exc:
        raise CliError(str(exc), USAGE) from None
    if args.chart:
        with open(args.chart, "w", encoding="utf-8") as out:
            out.write(trend_svg(metrics.months))
    if args.json:
        print(json.dumps(metrics.as_json(), indent=2))
        return OK
    rows = metrics.rows()
    header = ("metric", "scope", "value", "target", "met", "counted", "left out")
    widths = [max(len(str(r[h])) for r in [dict(zip(header, header)), *rows]) for h in header]
    for row in [dict(zip(header, header)), *rows]:
        print("  ".join(str(row[h]).ljust(w) for h, w in zip(header, widths)).rstrip())
    print(f"({metrics.drills_excluded} drills excluded; durations count from the alert's start)")
    if args.chart:
        print(f"trend chart written to {args.chart}")
    return OK
