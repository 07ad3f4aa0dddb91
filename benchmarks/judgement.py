"""Grades the runbooks' judgement on the fault catalog, through the running `make up` stack.

For each fault of the catalog (`runbooks faults`; README "Fault catalog"): the sandbox is reset,
the fault is injected only through the sandbox's public controls, kubectl and SQL (the drill
injectors), and once monitoring would see it, the scenario's deployment is run in dry-run mode
with the alert a monitor would send (startsAt = when the fault began). The plan it reports is
graded against the outcome the catalog wrote down before the run:

    right    the remedy that fixes it (or the abstention / nothing the catalog expects)
    abstain  no plan where a remedy was expected
    wrong    a plan that cannot fix it
    harmful  a plan that makes it worse (a healthy release rolled back, a healthy session
             ended, data cleared, ...)

Prints one row per fault, the totals, and the time from the run's start to its plan (median,
p99). Targets: 0 harmful, >= 90% right, the rest abstain; median time-to-plan <= 3 s.
Afterwards every fault is cleaned up and the sandbox reset.

    .venv/bin/python benchmarks/judgement.py [--only FAULT ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
API, SANDBOX = "http://127.0.0.1:4200/api", "http://127.0.0.1:8790"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _alert(spec, state, began: datetime) -> dict:
    return {"status": "firing", "startsAt": began.isoformat().replace("+00:00", "Z"), "fingerprint": uuid.uuid4().hex,
            "labels": {"alertname": spec.alertname, "service": "api", "environment": "sandbox",
                       "severity": spec.severity},
            "annotations": {"summary": f"judgement benchmark: {spec.description}", **state.annotations}}


def _judgement(store, run_id: str) -> dict | None:
    """The plan the dry run reported, from its record (a rule that predates `judgement` gives its plan)."""
    incident = store.incident_for_run(run_id)
    if incident is None:
        return None
    from incidents.models import EventKind

    event = next((e for e in store.timeline(incident.id) if e.kind == EventKind.DRY_RUN), None)
    if event is None:
        return None
    if "judgement" in event.data:
        return {**event.data["judgement"], "at": event.at}
    kinds = [a["kind"] for a in (event.data.get("plan") or {}).get("actions", [])]
    return {"kinds": kinds, "abstained": False, "confidence": "-", "summary": event.data["plan"].get("summary"),
            "at": event.at}


def _dry_run(api: httpx.Client, scenario: str, alert: dict) -> tuple[str, dict]:
    dep = api.get(f"/deployments/name/{scenario}/sandbox")
    dep.raise_for_status()
    created = api.post(f"/deployments/{dep.json()['id']}/create_flow_run", json={"parameters": {
        "service": "api", "environment": "sandbox", "dry_run": True, "alert": alert}})
    created.raise_for_status()
    run_id = created.json()["id"]
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = api.get(f"/flow_runs/{run_id}").json()
        if (run.get("state") or {}).get("type") in FINAL:
            return run_id, run
        time.sleep(0.2)
    raise TimeoutError(f"dry run {run_id} did not end within 180 s")


def play(spec, ctx, store, api: httpx.Client, sandbox: httpx.Client) -> dict:
    from incidents.drills import NOTHING, grade
    from tasks.faults import cleanup, inject, signal, wait_for

    sandbox.post("/_sandbox/reset").raise_for_status()
    time.sleep(2)  # the reset's pods become ready; the seeded release serves
    row: dict = {"fault": spec.name, "expected": spec.expected_text, "error": None}
    state = None
    try:
        injected = datetime.now(timezone.utc)
        state = inject(ctx, spec)
        if spec.outcome != NOTHING and not wait_for(lambda: signal(ctx, state), 60, poll=0.5):
            raise TimeoutError("the fault never became visible to monitoring")
        run_id, run = _dry_run(api, spec.scenario, _alert(spec, state, state.began_at or injected))
        if run["state"]["type"] != "COMPLETED":
            raise RuntimeError(f"dry run ended {run['state']['type']}: {run['state'].get('message')}")
        judged = _judgement(store, run_id)
        if judged is None:
            raise RuntimeError("the dry run recorded no plan")
        row.update(planned=", ".join(sorted(judged["kinds"])) or ("abstain" if judged["abstained"] else "nothing"),
                   confidence=judged.get("confidence"), summary=judged.get("summary") or "",
                   grade=grade(spec, set(judged["kinds"]), bool(judged["abstained"])),
                   plan_s=(judged["at"] - _ts(run["start_time"])).total_seconds(),
                   create_s=(judged["at"] - _ts(run["created"])).total_seconds())
    except Exception as exc:  # noqa: BLE001 - reported in the table and the totals
        row.update(grade="error", error=f"{type(exc).__name__}: {exc}")
    finally:
        if state is not None:
            cleanup(ctx, state)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", help="faults to play (default: the whole catalog)")
    args = parser.parse_args()

    from devstack.stack import stack_env

    os.environ.update(stack_env())
    from incidents.drills import CATALOG
    from incidents.store import IncidentStore
    from tasks.context import RunContext

    chosen = [CATALOG[name] for name in (args.only or CATALOG)]
    ctx, store = RunContext.load("sandbox", "api"), IncidentStore()
    api, sandbox = httpx.Client(base_url=API, timeout=15), httpx.Client(base_url=SANDBOX, timeout=15)
    try:
        api.get("/health").raise_for_status()
        sandbox.get("/_sandbox/healthz").raise_for_status()
    except httpx.HTTPError as exc:
        print(f"the stack is not up ({exc}): run `make up` first", file=sys.stderr)
        return 2
    print(f"{'fault':<38} {'expected':<38} {'planned':<38} {'conf':<7} {'grade':<8} {'to plan':>8}")
    rows = []
    try:
        for spec in chosen:
            row = play(spec, ctx, store, api, sandbox)
            rows.append(row)
            timing = f"{row['plan_s']:.2f} s" if "plan_s" in row else "-"
            print(f"{spec.name:<38} {row['expected']:<38} {row.get('planned', '-'):<38} "
                  f"{row.get('confidence') or '-':<7} {row['grade']:<8} {timing:>8}", flush=True)
            if row["error"] or row["grade"] != "right":
                print(f"    {row['error'] or row.get('summary', '')[:300]}")
    finally:
        sandbox.post("/_sandbox/reset")
    counts = {g: sum(r["grade"] == g for r in rows) for g in ("right", "abstain", "wrong", "harmful", "error")}
    timed = [r["plan_s"] for r in rows if "plan_s" in r]
    created = [r["create_s"] for r in rows if "create_s" in r]
    print(f"\n{len(rows)} faults ({sum(s.decoy_release for s in chosen)} with a healthy recent release that is not "
          f"the cause, {sum(s.faults >= 2 for s in chosen)} combining two faults)")
    print(
        "  "
        + ", ".join(f"{g} {n}" for g, n in counts.items())
        + f"; right {100 * counts['right'] / max(len(rows), 1):.0f}%"
        + "  (target: 0 harmful, >= 90% right, the rest abstain)"
    )
    if timed:
        print(
            f"  time to plan (run start -> plan): median {statistics.median(timed):.2f} s, "
            f"p99 {_pct(timed, 0.99):.2f} s, "
            f"max {max(timed):.2f} s  (target: median <= 3 s)"
        )
        print(
            "  time to plan (run created -> plan, with the worker's pick-up): "
            f"median {statistics.median(created):.2f} s,"
            f" p99 {_pct(created, 0.99):.2f} s"
        )
    print(f"  errors seen: {counts['error']}")
    ok = counts["harmful"] == 0 and counts["error"] == 0 and counts["right"] >= 0.9 * len(rows) \
        and counts["wrong"] == 0 and (not timed or statistics.median(timed) <= 3.0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
