"""The `runbooks` command, for people who live in a shell.

    runbooks run service-down --service api --env sandbox [--dry-run]   start and follow a run
    runbooks approvals                                                   runs waiting for approval
    runbooks approve RUN --reason "..." [--approver NAME]                the same gate as the UI
    runbooks decline RUN --reason "..."
    runbooks cancel RUN [--by NAME] [--reason "..."]                      stop a run; the timeline says who
    runbooks incidents [--open]  /  runbooks incident ID                 the incident record
    runbooks ack ID [--by NAME]                                          acknowledge: escalation stops
    runbooks role ID commander|comms|owner|scribe @HANDLE [--by NAME]    hand an incident role over
    runbooks note ID TEXT [--by NAME]                                    a note for the timeline and post-mortem
    runbooks summary ID [--by NAME]                                      the 24-hour summary went to stakeholders
    runbooks resolve ID --by NAME --note TEXT                            resolve by hand: Resolution, issue closed
    runbooks postmortem ID                                               start the post-incident run (its form)
    runbooks metrics [--env sandbox] [--json] [--chart FILE.svg]         MTTD / MTTA / MTTR against targets
    runbooks sandbox break bad-deploy|error-spike|dependency-down  /  runbooks sandbox heal
    runbooks up | down | check-config [FILE] [--against prefect.yaml] [--resolve] [--connect]
    runbooks slack-manifest [FILE] [--env ENV] [--url HTTPS] [-o FILE]   the Slack app's manifest (/incident)

Exit codes: 0 done (run completed, answer accepted), 1 failed (run failed, answer refused,
not found), 2 usage error, 3 waiting for approval, 4 cannot reach the Prefect API or the store.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

from deployments.cli_check_config import add_parser as add_check_config
from deployments.cli_check_config import cmd_check_config
from deployments.cli_common import (
    FAILED,
    FINAL,
    OK,
    SCENARIOS,
    USAGE,
    CliError,
    actor_name,
    api,
    api_url,
    find_run,
    follow,
    open_store,
)
from deployments.cli_containment import add_commands as add_containment_commands
from deployments.cli_containment import cmd_containment
from deployments.cli_incidents import (
    cmd_ack,
    cmd_incident,
    cmd_incidents,
    cmd_metrics,
    cmd_note,
    cmd_postmortem,
    cmd_resolve,
    cmd_role,
    cmd_summary,
)
from deployments.cli_local import FAULTS, cmd_faults, cmd_sandbox
from deployments.slack_manifest import add_parser as add_slack_manifest
from deployments.slack_manifest import cmd_slack_manifest
from incidents.models import Approval


# -- run and follow ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    deployment = f"{args.scenario}/{args.env}"
    dep = api("GET", f"/deployments/name/{deployment}")
    params: dict[str, Any] = {"environment": args.env}
    if args.scenario != "incident-drill":
        params["service"] = args.service
        params["dry_run"] = args.dry_run
        if args.severity:
            params["severity"] = args.severity
    elif args.fault:
        from incidents.drills import CATALOG

        if args.fault not in CATALOG:
            raise CliError(f"no fault {args.fault!r} in the catalog; `runbooks faults` lists them", USAGE)
        params.update(scenario=args.fault, service=args.service)
    # the key makes a create that is tried again (the server was busy) one run, never two
    run = api("POST", f"/deployments/{dep['id']}/create_flow_run",
               json={"parameters": params, "idempotency_key": f"runbooks-cli-{uuid.uuid4()}"})
    print(f"started {deployment} run {run['name']} ({run['id']})")
    print(f"  UI: {api_url().removesuffix('/api')}/runs/flow-run/{run['id']}")
    if args.no_follow:
        return OK
    return follow(run["id"], args.timeout)


# -- approvals ---------------------------------------------------------------------------------------
def cmd_approvals(args: argparse.Namespace) -> int:
    """The paused runs and, for each one waiting for an approval, its plan as the incident store
    holds it (the same record the approval gate checks). A run paused for another form (a
    post-mortem) is listed as such."""
    runs = api("POST", "/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                                                   "sort": "START_TIME_DESC", "limit": 50})
    if not runs:
        print("no run is waiting for approval")
        return OK
    store, StoreError = open_store()
    for run in runs:
        print(f"{run['name']}  {run['id']}  paused since {run['state']['timestamp'][:19]}Z")
        try:
            approval = store.approval_for_run(run["id"])
        except StoreError as exc:
            print(f"    (plan not shown: {exc})")
            continue
        if approval is None:
            print("    waiting for a form, not an approval (a post-mortem, say): answer it in the UI")
            continue
        for line in _plan_lines(approval):
            print(f"    {line}")
    return OK


def _plan_lines(approval: Approval) -> list[str]:
    plan = approval.plan
    lines = [f"incident {approval.incident_id}: {plan.summary}" if plan.summary
             else f"incident {approval.incident_id}"]
    lines += [f"{n}. {action.describe()}" for n, action in enumerate(plan.actions, 1)]
    lines.append(f"Confidence: {plan.confidence}")
    return lines


def _answer(args: argparse.Namespace, approve: bool) -> int:
    run = find_run(args.run)
    if run["state"]["type"] != "PAUSED":
        raise CliError(f"run {run['name']} is {run['state']['name']}, not waiting for approval")
    approver = actor_name(args.approver)
    result = api("POST", f"/flow_runs/{run['id']}/resume",
                  json={"run_input": {"approve": approve, "approver": approver, "reason": args.reason}})
    if result.get("status") != "ACCEPT":
        raise CliError(f"refused: {(result.get('details') or {}).get('reason', result.get('status'))}")
    print(f"{'approved' if approve else 'declined'} {run['name']} as {approver}")
    return follow(run["id"], args.timeout) if args.follow else OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a run: the worker stops its process and the incident timeline records who and what
    had been done. A run waiting for approval has no process: it is cancelled at once."""
    from deployments.prefect_api import PrefectApi
    from deployments.run_control import CancelRefused, cancel_run

    run = find_run(args.run)
    if run["state"]["type"] in FINAL:
        raise CliError(f"run {run['name']} has already ended ({run['state']['name']})")
    who = actor_name(args.by)
    store, store_error = open_store()
    try:
        cancel_run(PrefectApi(api_url()), store, run, who, args.reason or "")
    except CancelRefused as exc:
        raise CliError(f"refused: {exc}") from None
    except store_error as exc:
        print(f"runbooks: the Cancel is not in the incident timeline: {exc}", file=sys.stderr)
    started = time.monotonic()
    print(f"cancelling {run['name']} ({run['state']['name']}) as {who}")
    current = run["state"]
    while time.monotonic() - started < args.timeout:
        current = api("GET", f"/flow_runs/{run['id']}")["state"]
        if current["type"] in FINAL:
            print(f"run {current['name']} after {time.monotonic() - started:.1f} s")
            return OK if current["type"] == "CANCELLED" else FAILED
        time.sleep(0.2)
    print(f"still {current['name']} after {args.timeout:g} s: is a worker serving the pool?")
    return FAILED


def cmd_approve(args: argparse.Namespace) -> int:
    return _answer(args, True)


def cmd_decline(args: argparse.Namespace) -> int:
    return _answer(args, False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="runbooks", description="Incident-response runbooks on Prefect.",
                                epilog="Exit codes: 0 done, 1 failed, 2 usage, 3 waiting for approval, 4 unreachable.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start a scenario and follow it until it pauses or ends")
    run.add_argument("scenario", choices=SCENARIOS)
    run.add_argument("--service", default="api")
    run.add_argument("--env", default="sandbox", help="environment (deployment <scenario>/<env>)")
    run.add_argument("--severity", choices=["P0", "P1", "P2", "P3"])
    run.add_argument("--dry-run", action="store_true", help="diagnose and plan only; change nothing")
    run.add_argument("--no-follow", action="store_true")
    run.add_argument("--timeout", type=float, default=600, help="seconds to follow before giving up")
    run.add_argument("--fault", help="incident-drill only: the catalog fault to play (see `runbooks faults`)")
    faults = sub.add_parser("faults", help="the fault catalog: each fault, how it is injected, and the expected "
                                           "outcome")
    faults.add_argument("--json", action="store_true", help="print the catalog as a JSON list, one object per fault")
    sub.add_parser("approvals", help="list runs waiting for approval, with their plans")
    for name, verb in (("approve", "approve"), ("decline", "decline")):
        answer = sub.add_parser(name, help=f"{verb} a paused run's plan (the same gate as the UI)")
        answer.add_argument("run", help="flow run id or name")
        answer.add_argument("--reason", required=True)
        answer.add_argument("--approver", help="your name (default: $RUNBOOKS_APPROVER or your login)")
        answer.add_argument("--follow", action="store_true", help="follow the run afterwards")
        answer.add_argument("--timeout", type=float, default=600)
    _run_commands(sub)
    _incident_commands(sub)
    add_containment_commands(sub)
    _local_commands(sub)
    return p


def _run_commands(sub: Any) -> None:
    cancel = sub.add_parser("cancel", help="cancel a run: its process is stopped, the timeline records it")
    cancel.add_argument("run", help="flow run id or name")
    cancel.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    cancel.add_argument("--reason", help="why (recorded with your name)")
    cancel.add_argument("--timeout", type=float, default=30, help="seconds to wait for the run to end")


def _incident_commands(sub: Any) -> None:
    incidents = sub.add_parser("incidents", help="list incidents")
    incidents.add_argument("--open", action="store_true")
    incidents.add_argument("--limit", type=int, default=20)
    incident = sub.add_parser("incident", help="show one incident with its timeline")
    incident.add_argument("id", type=int)
    ack = sub.add_parser("ack", help="acknowledge an incident: you are on it; escalation stops")
    ack.add_argument("id", type=int)
    ack.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    role = sub.add_parser("role", help="hand an incident role over (commander, comms, owner, scribe)")
    role.add_argument("id", type=int)
    role.add_argument("role", choices=["commander", "comms", "owner", "scribe"])
    role.add_argument("handle", help="who takes it over (@name)")
    role.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    note = sub.add_parser("note", help="a note for the incident's timeline and its post-mortem")
    note.add_argument("id", type=int)
    note.add_argument("text", nargs="+")
    note.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    summary = sub.add_parser("summary", help="say the 24-hour summary went to stakeholders (the comms lead's duty)")
    summary.add_argument("id", type=int)
    summary.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    resolve = sub.add_parser("resolve", help="resolve an incident by hand: Resolution message, issue closed")
    resolve.add_argument("id", type=int)
    resolve.add_argument("--by", required=True, help="your name")
    resolve.add_argument("--note", required=True, help="how it was resolved")
    resolve.add_argument("--timeout", type=float, default=120, help="seconds to wait for the resolve run")
    postmortem = sub.add_parser("postmortem", help="start the post-incident run of an incident (its form)")
    postmortem.add_argument("id", type=int)
    metrics = sub.add_parser("metrics", help="MTTD, MTTA, MTTR, frequency and post-mortems against the targets")
    metrics.add_argument("--env", default="sandbox")
    metrics.add_argument("--json", action="store_true")
    metrics.add_argument("--chart", metavar="FILE", help="also write the trend per month as an SVG chart")


def _local_commands(sub: Any) -> None:
    sandbox = sub.add_parser("sandbox", help="break or heal the sandbox, or serve it in the foreground")
    sandbox.add_argument("action", choices=["break", "heal", "serve"])
    sandbox.add_argument("fault", nargs="?", help=f"for break: {', '.join(FAULTS)}")
    up = sub.add_parser("up", help="start the local stack")
    up.add_argument("--ha", action="store_true", help="the scale-out stack: two Prefect API servers behind HAProxy, "
                                                      "services apart, Redis messaging, two intakes, two workers")
    sub.add_parser("down", help="stop what `runbooks up` started")
    add_check_config(sub)
    add_slack_manifest(sub)


@contextlib.contextmanager
def _prefect_api_env() -> Iterator[None]:
    """What a command does in this process (a note, a containment lift) reaches the same Prefect
    API as the runs, its Secret blocks included: unset, Prefect would start a temporary server of
    its own. Set for the command only, so a caller's environment is left as it was."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    os.environ["PREFECT_API_URL"] = api_url()
    try:
        yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, rest = p.parse_known_args(argv)
    if rest and args.command != "sandbox":
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "sandbox" and args.action == "break" and not args.fault:
        p.error(f"sandbox break needs a fault: {', '.join(FAULTS)}")
    commands = {"run": cmd_run, "approvals": cmd_approvals, "approve": cmd_approve, "decline": cmd_decline,
                "cancel": cmd_cancel,
                "incidents": cmd_incidents, "incident": cmd_incident, "check-config": cmd_check_config,
                "slack-manifest": cmd_slack_manifest,
                "ack": cmd_ack, "role": cmd_role, "note": cmd_note, "summary": cmd_summary, "resolve": cmd_resolve,
                "postmortem": cmd_postmortem, "metrics": cmd_metrics, "faults": cmd_faults,
                "containment": cmd_containment}
    try:
        if args.command in ("up", "down"):
            from devstack.stack import main as stack_main

            return stack_main([args.command, *(["--ha"] if getattr(args, "ha", False) else [])])
        if args.command == "sandbox":
            return cmd_sandbox(args, rest)
        with _prefect_api_env():
            return commands[args.command](args)
    except CliError as exc:
        print(f"runbooks: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return FAILED
    except BrokenPipeError:  # `runbooks incidents | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return OK


if __name__ == "__main__":
    sys.exit(main())
