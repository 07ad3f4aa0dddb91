"""The `runbooks` command, for people who live in a shell.

    runbooks run service-down --service api --env sandbox [--dry-run]   start and follow a run
    runbooks approvals                                                   runs waiting for approval
    runbooks approve RUN --reason "..." [--approver NAME]                the same gate as the UI
    runbooks decline RUN --reason "..."
    runbooks cancel RUN [--by NAME] [--reason "..."]                      stop a run; the timeline says who
    runbooks incidents [--open]  /  runbooks incident ID                 the incident record
    runbooks ack ID [--by NAME]                                          acknowledge: escalation stops
    runbooks resolve ID --by NAME --note TEXT                            resolve by hand: Resolution, issue closed
    runbooks postmortem ID                                               start the post-incident run (its form)
    runbooks metrics [--env sandbox] [--json] [--chart FILE.svg]         MTTD / MTTA / MTTR against targets
    runbooks sandbox break bad-deploy|error-spike|dependency-down|db-lock  /  runbooks sandbox heal
    runbooks up | down | check-config [FILE]

Exit codes: 0 done (run completed, answer accepted), 1 failed (run failed, answer refused,
not found), 2 usage error, 3 waiting for approval, 4 cannot reach the Prefect API or the store.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import uuid
from typing import Any

import httpx

from deployments.prefect_api import auth_headers
from incidents.alerts import target_of
from incidents.config import ConfigError, config_path, load_config
from integrations.errors import IntegrationError
from integrations.http import RetryPolicy, request
from integrations.http import client as http_client

OK, FAILED, USAGE, WAITING, UNREACHABLE = 0, 1, 2, 3, 4
SCENARIOS = ("service-down", "high-error-rate", "database-issues", "security-incident", "incident-drill")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class CliError(Exception):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def store_failure(exc: Exception) -> CliError:
    """The exit code of an incident store failure, chosen by its type, in one place: a wrong id
    fails (1); a store that cannot be reached is unreachable (4), worth trying again."""
    from incidents.store import NotFound

    return CliError(str(exc), FAILED if isinstance(exc, NotFound) else UNREACHABLE)


def api_url() -> str:
    return os.environ.get("PREFECT_API_URL", "http://127.0.0.1:4200/api").rstrip("/")


# A busy or restarting server (Prefect answers 503 for errors a client may retry) is asked
# again after 0.5, 1 and 2 s (a Retry-After up to 5 s instead), saying so on stderr.
API_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_wait=5.0)


def _api(method: str, path: str, **kwargs: Any) -> Any:
    def say(why: str, pause: float) -> None:
        print(f"runbooks: Prefect API busy or unreachable ({why[:80]}) for {path}; trying again in {pause:g} s",
              file=sys.stderr)

    try:
        with http_client(timeout=10, headers=auth_headers()) as client:
            response = request(client, method, f"{api_url()}{path}", what=f"Prefect API {method} {path}",
                               retry=API_RETRY, ok=(404,), on_retry=say, **kwargs)
    except IntegrationError as exc:
        if exc.status is None:
            raise CliError(f"cannot reach the Prefect API at {api_url()} ({exc.reason}); is `make up` running? "
                           "Set PREFECT_API_URL to use another server.", UNREACHABLE) from None
        raise CliError(f"Prefect API answered {exc.status} for {path}: {exc.reason}") from None
    if response.status_code == 404:
        raise CliError(f"not found: {path}")
    return response.json() if response.content else None


def _find_run(ref: str) -> dict:
    """A flow run by id, or by name (as the UI shows it)."""
    if len(ref) == 36 and ref.count("-") == 4:
        return _api("GET", f"/flow_runs/{ref}")
    runs = _api("POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [ref]}}, "limit": 2})
    if not runs:
        raise CliError(f"no flow run with id or name {ref!r}; `runbooks approvals` lists the paused ones")
    return runs[0]


def _plan_of(run: dict) -> str | None:
    keys = (run["state"].get("state_details") or {}).get("run_input_keyset")
    if not keys:
        return None
    try:
        text = _api("GET", f"/flow_runs/{run['id']}/input/{keys['description']}")
    except CliError:
        return None
    return text if isinstance(text, str) else json.dumps(text)


def _plain(markdown: str) -> str:
    return markdown.replace("\\", "").replace("**", "").replace("`", "")


# -- run and follow ----------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    deployment = f"{args.scenario}/{args.env}"
    dep = _api("GET", f"/deployments/name/{deployment}")
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
    run = _api("POST", f"/deployments/{dep['id']}/create_flow_run",
               json={"parameters": params, "idempotency_key": f"runbooks-cli-{uuid.uuid4()}"})
    print(f"started {deployment} run {run['name']} ({run['id']})")
    print(f"  UI: {api_url().removesuffix('/api')}/runs/flow-run/{run['id']}")
    if args.no_follow:
        return OK
    return follow(run["id"], args.timeout)


def follow(run_id: str, timeout: float) -> int:
    """Print state changes and each step as it finishes, until the run pauses or ends."""
    seen: set[str] = set()
    last_state = None
    deadline = time.monotonic() + timeout
    while True:
        run = _api("GET", f"/flow_runs/{run_id}")
        run["state"] = run.get("state") or {"type": "SCHEDULED", "name": "Scheduled"}
        state = run["state"]["type"]
        if state != last_state:
            print(f"[{time.strftime('%H:%M:%S')}] run is {run['state']['name']}")
            last_state = state
        tasks = _api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}},
                                                        "sort": "EXPECTED_START_TIME_ASC"})
        for task in tasks:
            if (task.get("state") or {}).get("type") in FINAL and task["id"] not in seen:
                seen.add(task["id"])
                mark = "ok" if task["state"]["type"] == "COMPLETED" else task["state"]["type"].lower()
                print(f"  [{mark}] {task['name'].rsplit('-', 1)[0]}")
        if state == "PAUSED":
            plan = _plan_of(run)
            if plan:
                print("\n" + _plain(plan) + "\n")
            print(f"waiting for approval: runbooks approve {run['name']} --reason \"...\"   "
                  f"(or: runbooks decline {run['name']} --reason \"...\")")
            return WAITING
        if state in FINAL:
            message = run["state"].get("message") or ""
            print(f"run {run['state']['name']}" + (f": {message}" if message and state != "COMPLETED" else ""))
            return OK if state == "COMPLETED" else FAILED
        if time.monotonic() > deadline:
            print(f"still {run['state']['name']} after {timeout:g} s; follow it in the UI")
            return WAITING if state == "PAUSED" else FAILED
        time.sleep(1.0)


# -- approvals ---------------------------------------------------------------------------------------
def cmd_approvals(args: argparse.Namespace) -> int:
    """The paused runs and, for each one waiting for an approval, its plan as the incident store
    holds it (the same record the approval gate checks). A run paused for another form (a
    post-mortem) is listed as such."""
    runs = _api("POST", "/flow_runs/filter", json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                                                   "sort": "START_TIME_DESC", "limit": 50})
    if not runs:
        print("no run is waiting for approval")
        return OK
    store, StoreError = _store()
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


def _plan_lines(approval: dict) -> list[str]:
    from incidents.plans import Plan

    plan = Plan.from_dict(approval["plan"])
    lines = [f"incident {approval['incident_id']}: {plan.summary}" if plan.summary
             else f"incident {approval['incident_id']}"]
    lines += [f"{n}. {action.describe()}" for n, action in enumerate(plan.actions, 1)]
    lines.append(f"Confidence: {plan.confidence}")
    return lines


def _answer(args: argparse.Namespace, approve: bool) -> int:
    run = _find_run(args.run)
    if run["state"]["type"] != "PAUSED":
        raise CliError(f"run {run['name']} is {run['state']['name']}, not waiting for approval")
    approver = _who(args.approver)
    result = _api("POST", f"/flow_runs/{run['id']}/resume",
                  json={"run_input": {"approve": approve, "approver": approver, "reason": args.reason}})
    if result.get("status") != "ACCEPT":
        raise CliError(f"refused: {(result.get('details') or {}).get('reason', result.get('status'))}")
    print(f"{'approved' if approve else 'declined'} {run['name']} as {approver}")
    return follow(run["id"], args.timeout) if args.follow else OK


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a run: the worker stops its process and the incident timeline records who and what
    had been done. A run waiting for approval has no process: it is cancelled at once."""
    run = _find_run(args.run)
    if run["state"]["type"] in FINAL:
        raise CliError(f"run {run['name']} has already ended ({run['state']['name']})")
    who = _who(args.by)
    message = f"Cancelled by {who}: {args.reason}" if args.reason else f"Cancelled by {who}"
    waiting = run["state"]["type"] in ("PAUSED", "SCHEDULED")
    state = {"type": "CANCELLED" if waiting else "CANCELLING", "name": "Cancelled" if waiting else "Cancelling",
             "message": message}
    result = _api("POST", f"/flow_runs/{run['id']}/set_state", json={"state": state, "force": waiting})
    if result.get("status") != "ACCEPT":
        raise CliError(f"refused: {(result.get('details') or {}).get('reason', result.get('status'))}")
    if waiting:
        _record_cancel_of_waiting_run(run, who, message)
    started = time.monotonic()
    print(f"cancelling {run['name']} ({run['state']['name']}) as {who}")
    while time.monotonic() - started < args.timeout:
        current = _api("GET", f"/flow_runs/{run['id']}")["state"]
        if current["type"] in FINAL:
            print(f"run {current['name']} after {time.monotonic() - started:.1f} s")
            return OK if current["type"] == "CANCELLED" else FAILED
        time.sleep(0.2)
    print(f"still {current['name']} after {args.timeout:g} s: is a worker serving the pool?")
    return FAILED


def _record_cancel_of_waiting_run(run: dict, who: str, message: str) -> None:
    """No process to stop, so no hook runs: the timeline entry is written (and the service's
    lease given back) here."""
    store, store_error = _store()
    try:
        params = run.get("parameters") or {}
        if params.get("environment") and params.get("service"):  # the service is free for the next runbook
            store.release_lease(target_of(params["environment"], params["service"]), run["id"])
        incident = store.incident_for_run(run["id"])
        if incident is not None:
            store.add_event(incident.id, who, "cancelled", f"Runbook run {run['name']} cancelled while it "
                            f"was {run['state']['name'].lower()} ({message}); nothing was changed by it.",
                            {"flow_run_id": run["id"]})
    except store_error as exc:
        print(f"runbooks: the Cancel is not in the incident timeline: {exc}", file=sys.stderr)


def cmd_approve(args: argparse.Namespace) -> int:
    return _answer(args, True)


def cmd_decline(args: argparse.Namespace) -> int:
    return _answer(args, False)


# -- incidents ---------------------------------------------------------------------------------------
def _store():
    from incidents.store import IncidentStore, StoreError

    return IncidentStore(), StoreError


def cmd_incidents(args: argparse.Namespace) -> int:
    store, StoreError = _store()
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
    store, StoreError = _store()
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
    print("timeline:")
    for event in timeline:
        print(f"  {event.at:%H:%M:%S}  {event.actor:<24.24} {event.kind:<20} {event.message}")
    return OK


def _who(name: str | None) -> str:
    return (name or os.environ.get("RUNBOOKS_APPROVER") or getpass.getuser()).strip()


def cmd_resolve(args: argparse.Namespace) -> int:
    """Through the `resolve-incident/<env>` deployment: its worker holds the secrets that post
    the Resolution and close the issue (a shell usually does not)."""
    store, StoreError = _store()
    try:
        incident = store.get(args.id)
    except StoreError as exc:
        raise store_failure(exc) from None
    if incident.resolved_at is not None:
        raise CliError(f"incident #{args.id} is already resolved ({incident.resolution or 'no resolution noted'})")
    by, note = _who(args.by), args.note.strip()
    if not by or not note:
        raise CliError("say who resolves it (--by NAME) and how it was resolved (--note TEXT)", USAGE)
    deployment = f"resolve-incident/{incident.environment}"
    dep = _api("GET", f"/deployments/name/{deployment}")
    run = _api("POST", f"/deployments/{dep['id']}/create_flow_run", json={
        "parameters": {"incident_id": incident.id, "resolved_by": by, "note": note,
                       "environment": incident.environment},
        "idempotency_key": f"runbooks-cli-{uuid.uuid4()}"})
    print(f"resolving incident #{incident.id} through {deployment} run {run['name']}")
    code = follow(run["id"], args.timeout)
    if code != OK:
        return code
    print(f"incident #{incident.id} resolved by {by}")
    return OK


def cmd_ack(args: argparse.Namespace) -> int:
    store, StoreError = _store()
    os.environ.setdefault("PREFECT_API_URL", api_url())
    try:
        incident = store.get(args.id)
        from tasks.watch import acknowledge

        acknowledged = acknowledge(incident.environment, args.id, _who(args.by))
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
    store, StoreError = _store()
    try:
        incident = store.get(args.id)
    except StoreError as exc:
        raise store_failure(exc) from None
    deployment = f"post-incident/{incident.environment}"
    dep = _api("GET", f"/deployments/name/{deployment}")
    run = _api("POST", f"/deployments/{dep['id']}/create_flow_run",
               json={"parameters": {"incident_id": incident.id, "environment": incident.environment},
                     "idempotency_key": f"runbooks-cli-{uuid.uuid4()}"})
    print(f"started {deployment} run {run['name']} for incident #{incident.id}")
    print(f"  the form (once the run waits for it): {api_url().removesuffix('/api')}/runs/flow-run/{run['id']}")
    return OK


def cmd_metrics(args: argparse.Namespace) -> int:
    from incidents.metrics import trend_svg
    from incidents.store import StoreError
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
        print(json.dumps({"figures": metrics.rows(), "months": metrics.months,
                          "drills_excluded": metrics.drills_excluded}, indent=2))
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


# -- sandbox -----------------------------------------------------------------------------------------
FAULTS = {
    "bad-deploy": ("/_sandbox/deploy", {"service": "api", "version": "v2-broken"}),
    "error-spike": ("/_sandbox/load", {"service": "api", "rps": 200}),
    "dependency-down": ("/_sandbox/dependency", {"service": "api", "down": True}),
}


def cmd_sandbox(args: argparse.Namespace, rest: list[str]) -> int:
    url = os.environ.get("RUNBOOKS_SANDBOX_URL", "http://127.0.0.1:8790").rstrip("/")
    if args.action == "serve":
        from sandbox.__main__ import main as sandbox_main

        sys.argv = ["runbooks sandbox serve", *rest]
        sandbox_main()
        return OK
    try:
        if args.action == "heal":
            httpx.post(f"{url}/_sandbox/reset", timeout=10).raise_for_status()
            print("sandbox reset: api and frontend healthy, messages and faults cleared")
            return OK
        if args.fault not in FAULTS:
            raise CliError(f"unknown fault {args.fault!r}; choose one of: {', '.join(FAULTS)}", USAGE)
        path, body = FAULTS[args.fault]
        httpx.post(f"{url}{path}", json=body, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the sandbox at {url} ({type(exc).__name__}); is `make up` running?",
                       UNREACHABLE) from None
    hint = {"bad-deploy": "service-down", "error-spike": "high-error-rate", "dependency-down": "high-error-rate"}
    print(f"injected {args.fault}; try: runbooks run {hint[args.fault]} --service api")
    return OK


def cmd_check_config(args: argparse.Namespace) -> int:
    path = args.file or config_path()
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CliError(f"invalid: {exc}") from None
    for name, env in config.environments.items():
        services = ", ".join(f"{s} ({c.rollback_strategy})" for s, c in env.services.items())
        print(f"{path}: environment {name}: production={env.production} drills_allowed={env.drills_allowed}; "
              f"services: {services}")
    print(f"{len(config.routing)} alert routing rules")
    return OK


def cmd_faults(args: argparse.Namespace) -> int:
    from incidents.drills import CATALOG

    print(f"{'fault':<38} {'scenario':<18} {'expected':<40} injected")
    for spec in CATALOG.values():
        how = "; ".join(step.describe() for step in spec.steps)
        print(f"{spec.name:<38} {spec.scenario:<18} {spec.expected_text:<40} {how}"
              + (" [sandbox only]" if spec.sandbox_only else ""))
    print("\nPlay one end to end: runbooks run incident-drill --fault <fault>")
    return OK


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
    sub.add_parser("faults", help="the fault catalog: each fault, how it is injected, and the expected outcome")
    sub.add_parser("approvals", help="list runs waiting for approval, with their plans")
    for name, verb in (("approve", "approve"), ("decline", "decline")):
        answer = sub.add_parser(name, help=f"{verb} a paused run's plan (the same gate as the UI)")
        answer.add_argument("run", help="flow run id or name")
        answer.add_argument("--reason", required=True)
        answer.add_argument("--approver", help="your name (default: $RUNBOOKS_APPROVER or your login)")
        answer.add_argument("--follow", action="store_true", help="follow the run afterwards")
        answer.add_argument("--timeout", type=float, default=600)
    cancel = sub.add_parser("cancel", help="cancel a run: its process is stopped, the timeline records it")
    cancel.add_argument("run", help="flow run id or name")
    cancel.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    cancel.add_argument("--reason", help="why (recorded with your name)")
    cancel.add_argument("--timeout", type=float, default=30, help="seconds to wait for the run to end")
    incidents = sub.add_parser("incidents", help="list incidents")
    incidents.add_argument("--open", action="store_true")
    incidents.add_argument("--limit", type=int, default=20)
    incident = sub.add_parser("incident", help="show one incident with its timeline")
    incident.add_argument("id", type=int)
    ack = sub.add_parser("ack", help="acknowledge an incident: you are on it; escalation stops")
    ack.add_argument("id", type=int)
    ack.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
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
    sandbox = sub.add_parser("sandbox", help="break or heal the sandbox, or serve it in the foreground")
    sandbox.add_argument("action", choices=["break", "heal", "serve"])
    sandbox.add_argument("fault", nargs="?", help=f"for break: {', '.join(FAULTS)}")
    sub.add_parser("up", help="start the local stack")
    sub.add_parser("down", help="stop what `runbooks up` started")
    check = sub.add_parser("check-config", help="validate a config file")
    check.add_argument("file", nargs="?")
    return p


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
                "ack": cmd_ack, "resolve": cmd_resolve, "postmortem": cmd_postmortem, "metrics": cmd_metrics,
                "faults": cmd_faults}
    try:
        if args.command in ("up", "down"):
            from devstack.stack import main as stack_main

            return stack_main([args.command])
        if args.command == "sandbox":
            return cmd_sandbox(args, rest)
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
