"""What the `runbooks` commands share: exit codes, errors, the Prefect API with retries, the
incident store, and who is acting."""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from typing import Any

from deployments.prefect_api import PrefectApi, api_url, explain
from incidents.errors import RunbookError
from integrations.errors import IntegrationError, Unreachable
from integrations.http import RetryPolicy

OK, FAILED, USAGE, WAITING, UNREACHABLE = 0, 1, 2, 3, 4
SCENARIOS = ("service-down", "high-error-rate", "database-issues", "security-incident", "incident-drill")
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


class CliError(RunbookError):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def store_failure(exc: RunbookError) -> CliError:
    """The exit code of an incident store failure, in one place: a wrong id fails (1); a store
    that cannot be reached is unreachable (4), worth trying again (the error's `transient`)."""
    return CliError(str(exc), UNREACHABLE if exc.transient else FAILED)


def api_failure(exc: IntegrationError, path: str) -> CliError:
    """The exit code of a failed Prefect API call, chosen by its type, in one place: no answer
    is unreachable (4), worth trying again; an answer that refused fails (1)."""
    if isinstance(exc, Unreachable):
        return CliError(f"cannot reach the Prefect API at {api_url()} ({exc.reason}); is `make up` running? "
                        "Set PREFECT_API_URL to use another server.", UNREACHABLE)
    if exc.status in (401, 403):
        return CliError(explain(exc))
    return CliError(f"Prefect API answered {exc.status} for {path}: {exc.reason}")


# A busy or restarting server (Prefect answers 503 for errors a client may retry) is asked
# again after 0.5, 1 and 2 s (a Retry-After up to 5 s instead), saying so on stderr.
API_RETRY = RetryPolicy(attempts=4, backoff=0.5, max_wait=5.0)


def api(method: str, path: str, **kwargs: Any) -> Any:
    def say(why: str, pause: float) -> None:
        print(f"runbooks: Prefect API busy or unreachable ({why[:80]}) for {path}; trying again in {pause:g} s",
              file=sys.stderr)

    try:
        response = PrefectApi(timeout=10, retry=API_RETRY, on_retry=say).call(method, path, ok=(404,), **kwargs)
    except IntegrationError as exc:
        raise api_failure(exc, path) from None
    if response.status_code == 404:
        raise CliError(f"not found: {path}")
    return response.json() if response.content else None


def find_run(ref: str) -> dict:
    """A flow run by id, or by name (as the UI shows it). Runs an alert starts are named after
    its fingerprint, so a name recurs with each outage: the one run of that name that has not
    ended is meant; when all have ended, the newest."""
    if len(ref) == 36 and ref.count("-") == 4:
        return api("GET", f"/flow_runs/{ref}")
    runs = api("POST", "/flow_runs/filter", json={"flow_runs": {"name": {"any_": [ref]}},
                                                   "sort": "EXPECTED_START_TIME_DESC", "limit": 50})
    if not runs:
        raise CliError(f"no flow run with id or name {ref!r}; `runbooks approvals` lists the paused ones")
    live = [r for r in runs if (r.get("state") or {}).get("type") not in FINAL]
    if len(live) > 1:
        raise CliError(f"{len(live)} runs named {ref!r} have not ended ({', '.join(r['id'] for r in live)}): "
                       "give the id")
    return live[0] if live else runs[0]


def plan_of(run: dict) -> str | None:
    keys = (run["state"].get("state_details") or {}).get("run_input_keyset")
    if not keys:
        return None
    try:
        text = api("GET", f"/flow_runs/{run['id']}/input/{keys['description']}")
    except CliError:
        return None
    return text if isinstance(text, str) else json.dumps(text)


def plain(markdown: str) -> str:
    return markdown.replace("\\", "").replace("**", "").replace("`", "")


def open_store():
    from incidents.store import IncidentStore, StoreError

    return IncidentStore(), StoreError


def actor_name(name: str | None) -> str:
    return (name or os.environ.get("RUNBOOKS_APPROVER") or getpass.getuser()).strip()


# The server records a step's state from its events in batches, at most a second after it changed
# (PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL, devstack/stack.py): the last steps
# before a pause or the end are read again after this long.
RECORDER_LAG_SECONDS = 1.2


def _print_finished_steps(run_id: str, seen: set[str]) -> None:
    tasks = api("POST", "/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}},
                                                    "sort": "EXPECTED_START_TIME_ASC"})
    for task in tasks:
        if (task.get("state") or {}).get("type") in FINAL and task["id"] not in seen:
            seen.add(task["id"])
            mark = "ok" if task["state"]["type"] == "COMPLETED" else task["state"]["type"].lower()
            print(f"  [{mark}] {task['name'].rsplit('-', 1)[0]}")


def follow(run_id: str, timeout: float) -> int:
    """Print state changes and each step as it finishes, until the run pauses or ends."""
    seen: set[str] = set()
    last_state = None
    deadline = time.monotonic() + timeout
    while True:
        run = api("GET", f"/flow_runs/{run_id}")
        run["state"] = run.get("state") or {"type": "SCHEDULED", "name": "Scheduled"}
        state = run["state"]["type"]
        if state != last_state:
            print(f"[{time.strftime('%H:%M:%S')}] run is {run['state']['name']}")
            last_state = state
        _print_finished_steps(run_id, seen)
        if state == "PAUSED" or state in FINAL:
            time.sleep(RECORDER_LAG_SECONDS)
            _print_finished_steps(run_id, seen)
        if state == "PAUSED":
            plan = plan_of(run)
            if plan:
                print("\n" + plain(plan) + "\n")
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
