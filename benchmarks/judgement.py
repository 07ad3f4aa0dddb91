"""Grades the runbooks' judgement on the fault catalog, through the running `make up` stack.

For each fault of the catalog (`runbooks faults`; docs/judgement.md, "Fault catalog"): the sandbox is reset,
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
p99). Targets: 0 harmful, >= 90% right, the rest abstain; median time-to-plan <= 2 s (issue 27's goal).
Afterwards every fault is cleaned up and the sandbox reset.

`--held-out N` (pinned) plays, after the catalog, N combinations the catalog does not list,
generated from the same steps (incidents/held_out.py: two faults in random order and gaps, a
healthy release before or during them, another service broken), each graded against the
outcome the rules written down in that module derive; the totals are printed for the catalog
and for the generated set apart. `--seed` picks another generated set.

    .venv/bin/python benchmarks/judgement.py [--only FAULT ...] [--held-out N [--seed S]] [--no-catalog]
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
PLAN_TARGET_SECONDS = 2.0  # median time from the run's start to its plan


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
    parser.add_argument("--held-out", type=int, default=0, metavar="N",
                        help="also play N generated combinations the catalog does not list")
    parser.add_argument("--seed", type=int, default=27, help="which generated set (default 27)")
    parser.add_argument("--no-catalog", action="store_true", help="play only the generated set")
    args = parser.parse_args()

    from devstack.stack import stack_env

    os.environ.update(stack_env())
    from incidents.drills import CATALOG
    from incidents.held_out import generate
    from incidents.store import IncidentStore
    from tasks.context import RunContext

    chosen = [] if args.no_catalog else [CATALOG[name] for name in (args.only or CATALOG)]
    held_out = generate(args.held_out, args.seed) if args.held_out else []
    ctx, store = RunContext.load("sandbox", "api"), IncidentStore()
    api, sandbox = httpx.Client(base_url=API, timeout=15), httpx.Client(base_url=SANDBOX, timeout=15)
    try:
        api.get("/health").raise_for_status()
        sandbox.get("/_sandbox/healthz").raise_for_status()
    except httpx.HTTPError as exc:
        print(f"the stack is not up ({exc}): run `make up` first", file=sys.stderr)
        return 2
    sets = [("catalog", chosen), ("held out", held_out)]
    results: dict[str, list[dict]] = {}
    try:
        for label, specs in sets:
            if specs:
                results[label] = _play_all(label, specs, ctx, store, api, sandbox)
    finally:
        sandbox.post("/_sandbox/reset")
    ok = True
    for label, specs in sets:
        if specs:
            ok = _totals(label, specs, results.get(label, [])) and ok
    return 0 if ok else 1


def _play_all(label: str, specs: list, ctx, store, api: httpx.Client, sandbox: httpx.Client) -> list[dict]:
    print(f"\n== {label}: {len(specs)} faults")
    print(f"{'fault':<44} {'expected':<30} {'planned':<30} {'conf':<7} {'grade':<8} {'to plan':>8}")
    rows = []
    for spec in specs:
        row = play(spec, ctx, store, api, sandbox)
        rows.append(row)
        timing = f"{row['plan_s']:.2f} s" if "plan_s" in row else "-"
        print(f"{spec.name[:44]:<44} {row['expected']:<30} {row.get('planned', '-'):<30} "
              f"{row.get('confidence') or '-':<7} {row['grade']:<8} {timing:>8}", flush=True)
        if row["error"] or row["grade"] != "right":
            print(f"    {spec.description}\n    {row['error'] or row.get('summary', '')[:400]}")
    return rows


def _totals(label: str, specs: list, rows: list[dict]) -> bool:
    counts = {g: sum(r["grade"] == g for r in rows) for g in ("right", "abstain", "wrong", "harmful", "error")}
    timed = [r["plan_s"] for r in rows if "plan_s" in r]
    created = [r["create_s"] for r in rows if "create_s" in r]
    print(f"\n{label}: {len(rows)} faults ({sum(s.decoy_release for s in specs)} with a healthy recent release that "
          f"is not the cause, {sum(s.faults >= 2 for s in specs)} combining two faults)")
    print(
        "  "
        + ", ".join(f"{g} {n}" for g, n in counts.items())
        + f"; right {100 * counts['right'] / max(len(rows), 1):.0f}%"
        + "  (target: 0 harmful, 0 wrong, >= 90% right, the rest abstain)"
    )
    if timed:
        print(
            f"  time to plan (run start -> plan): median {statistics.median(timed):.2f} s, "
            f"p99 {_pct(timed, 0.99):.2f} s, "
            f"max {max(timed):.2f} s  (target: median <= {PLAN_TARGET_SECONDS:g} s)"
        )
        print(
            "  time to plan (run created -> plan, with the worker's pick-up): "
            f"median {statistics.median(created):.2f} s,"
            f" p99 {_pct(created, 0.99):.2f} s"
        )
    print(f"  errors seen: {counts['error']}")
    return counts["harmful"] == 0 and counts["error"] == 0 and counts["right"] >= 0.9 * len(rows) \
        and counts["wrong"] == 0 and (not timed or statistics.median(timed) <= PLAN_TARGET_SECONDS)


if __name__ == "__main__":
    sys.exit(main())
