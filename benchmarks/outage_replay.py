"""Replays one outage through the running `make up` stack and counts what the product made of it.

The outage: a bad deploy of `api`. Monitoring fires `ServiceDown` and `HighErrorRate` for
`api`, each sent by two Prometheus replicas (an HA pair: same alert, label `replica` a/b,
startsAt a second apart); `ServiceDown` then resolves and fires again 20 s later (a flap).
The playbook's incident commander wants one incident, one issue, one page, one decision.

Prints: incidents opened, GitHub issues opened, Initial Alerts, Slack messages that page
someone, approvals waiting, flow runs started, Slack messages in all, and the intake's
answers. Target: 1 / 1 / 1 / 1 (incidents / issues / Initial Alerts / approvals waiting).
Afterwards the waiting runs are cancelled, the incidents resolved and api restored.

    .venv/bin/python benchmarks/outage_replay.py [--flap-seconds 20] [--settle 45]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx

from integrations import http

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
API, INTAKE, SANDBOX = "http://127.0.0.1:4200/api", "http://127.0.0.1:8787", "http://127.0.0.1:8790"
RUN_DIR = Path(os.environ.get("RUNBOOKS_RUN_DIR", ROOT / ".run"))
WAITING = ("PAUSED", "SCHEDULED")  # a run waiting for its approval is suspended (Paused), or rescheduled
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _alerts(alertname: str, status: str, starts: datetime, severity: str, ends: datetime | None = None) -> dict:
    """One Alertmanager webhook per replica would be two deliveries; an HA pair sends the same
    alert from both, each with its own replica label and its own evaluation time."""
    alerts = []
    for offset, replica in enumerate(("a", "b")):
        alert: dict[str, Any] = {
            "status": status, "startsAt": _iso(starts + timedelta(seconds=offset)),
            "labels": {"alertname": alertname, "service": "api", "environment": "sandbox", "severity": severity,
                       "replica": replica},
            "annotations": {"summary": f"{alertname} for api (outage replay)"}}
        if ends is not None:
            alert["endsAt"] = _iso(ends)
        alerts.append(alert)
    return {"version": "4", "status": status, "groupKey": f"outage-replay-{alertname}", "alerts": alerts}


class Replay:
    def __init__(self, token: str):
        self.intake = httpx.Client(base_url=INTAKE, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.api = httpx.Client(base_url=API, timeout=15)
        self.sandbox = httpx.Client(base_url=SANDBOX, timeout=15)
        from incidents.store import IncidentStore

        self.store = IncidentStore()
        self.answers: list[str] = []

    def send(self, payload: dict) -> None:
        answer = self.intake.post("/alerts/alertmanager", json=payload)
        body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else {}
        summary = {k: v for k, v in body.items() if k in ("started", "joined", "duplicates", "resolved", "error")}
        if "started" in summary:
            summary["started"] = len(summary["started"])
        if "joined" in summary and isinstance(summary["joined"], list):
            summary["joined"] = len(summary["joined"])
        self.answers.append(f"{payload['alerts'][0]['labels']['alertname']} {payload['status']}: "
                            f"HTTP {answer.status_code} {summary}")

    def runs_since(self, since: datetime) -> list[dict]:
        body = {"flow_runs": {"expected_start_time": {"after_": _iso(since - timedelta(seconds=5))},
                              "tags": {"all_": ["alert"]}}, "limit": 200}
        return [r for r in self.api.post("/flow_runs/filter", json=body).json()
                if r["created"] >= _iso(since - timedelta(seconds=1))[:-1]]

    def settle(self, since: datetime, timeout: float) -> list[dict]:
        """Until every run the replay started waits for a person or has ended."""
        deadline = time.monotonic() + timeout
        runs = self.runs_since(since)
        while time.monotonic() < deadline:
            runs = self.runs_since(since)
            waiting = [r for r in runs if r["state_type"] in WAITING and self._asked(r["id"])]
            if runs and all(r["state_type"] in FINAL or r in waiting for r in runs):
                break
            time.sleep(0.5)
        return runs

    def _asked(self, run_id: str) -> bool:
        return self.store.approval_for_run(run_id) is not None

    def incidents_since(self, since: datetime) -> list:
        return [i for i in self.store.list(limit=200) if i.opened_at >= since and i.service == "api"]

    def count(self, since: datetime, runs: list[dict]) -> dict[str, int]:
        incidents = self.incidents_since(since)
        messages = [m for m in self.sandbox.get("/_sandbox/slack/messages").json()
                    if m["received_at"] >= since.timestamp()]
        texts = [m.get("text") or "" for m in messages]
        issues = [i for i in self._issues() if i["created_at"] >= _iso(since)[:19]]
        waiting = sum(1 for i in incidents for a in self.store.approvals(i.id) if a.decision is None)
        return {
            "incidents": len(incidents),
            "issues": len(issues),
            "initial_alerts": sum(t.startswith("🚨 INCIDENT ALERT") for t in texts),
            "pages": sum(1 for t in texts if "Paging: " in t and "Paging: nobody" not in t),
            "approvals_waiting": waiting,
            "runs": len(runs),
            "slack_messages": len(messages),
        }

    def _issues(self) -> list[dict]:
        from sandbox.world import GITHUB_TOKEN

        answer = self.sandbox.get("/github/repos/acme/incidents/issues", params={"state": "all", "per_page": 500},
                                  headers={"Authorization": f"Bearer {GITHUB_TOKEN}"})
        return answer.json() if answer.status_code == 200 else []

    def clean_up(self, since: datetime, runs: list[dict]) -> None:
        for run in runs:
            if run["state_type"] not in FINAL:
                self.api.post(f"/flow_runs/{run['id']}/set_state", json={"force": True, "state": {
                    "type": "CANCELLED", "name": "Cancelled", "message": "Cancelled by the outage replay"}})
        for incident in self.incidents_since(since):
            if incident.resolved_at is None:
                self.store.close(incident.id, "outage replay", "closed by the outage replay benchmark",
                                 postmortem_needed=False)
        self.sandbox.post("/_sandbox/deploy", json={"service": "api", "version": "v1.5.0"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flap-seconds", type=float, default=20.0, help="resolved -> fires again after this long")
    parser.add_argument("--settle", type=float, default=45.0, help="seconds to wait for the runs to settle")
    args = parser.parse_args()
    token = os.environ.get("RUNBOOKS_ALERT_TOKEN") or (RUN_DIR / "alert-token").read_text().strip()
    replay = Replay(token)
    try:
        http.get(f"{INTAKE}/healthz", timeout=3).raise_for_status()
    except httpx.HTTPError as exc:
        print(f"the intake is not answering ({exc}): run `make up` first", file=sys.stderr)
        return 2
    since = datetime.now(timezone.utc)
    replay.sandbox.post("/_sandbox/deploy", json={"service": "api", "version": "v2-broken"}).raise_for_status()
    # The bad deploy goes live now and monitoring notices it a few seconds later: an alert that
    # began before the deploy would (rightly) speak against blaming it.
    outage = since + timedelta(seconds=3)
    time.sleep(4)
    t0 = time.monotonic()
    replay.send(_alerts("ServiceDown", "firing", outage, "P0"))
    replay.send(_alerts("HighErrorRate", "firing", outage + timedelta(seconds=5), "P1"))
    time.sleep(5)
    now = datetime.now(timezone.utc)
    replay.send(_alerts("ServiceDown", "resolved", outage, "P0", ends=now))
    time.sleep(args.flap_seconds)
    replay.send(_alerts("ServiceDown", "firing", datetime.now(timezone.utc), "P0"))
    runs = replay.settle(since, args.settle)
    figures = replay.count(since, runs)
    elapsed = time.monotonic() - t0
    print(f"Outage replay: ServiceDown + HighErrorRate for api, two replicas each, ServiceDown flapping "
          f"after {args.flap_seconds:g} s ({elapsed:.0f} s in all)")
    for line in replay.answers:
        print(f"  intake: {line}")
    print(f"  incidents {figures['incidents']} / issues {figures['issues']} / Initial Alerts "
          f"{figures['initial_alerts']} / approvals waiting {figures['approvals_waiting']}   (target 1 / 1 / 1 / 1)")
    print(f"  pages {figures['pages']}, runs {figures['runs']}, Slack messages {figures['slack_messages']}")
    replay.clean_up(since, runs)
    hit = [figures[k] for k in ("incidents", "issues", "initial_alerts", "approvals_waiting")] == [1, 1, 1, 1]
    print("  target met" if hit else "  target NOT met")
    return 0 if hit else 1


if __name__ == "__main__":
    sys.exit(main())
