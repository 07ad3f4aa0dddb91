"""Alert intake benchmark.

1. Storm: 5,000 Alertmanager deliveries over 20 distinct alerts, sent as fast as this
   machine allows (64 in flight) to an intake process of its own (with its own Prefect
   server, deployments registered, no worker): exactly 20 runs must be created. Prints
   deliveries/s and p50/p99 response time. Targets: >= 1,000/s, p99 <= 25 ms.
2. Latency: 20 alerts through the running `make up` stack (intake :8787, warm runner):
   alert posted -> the run's first diagnosis step started. Prints p50/p99. Targets: p50 <= 2 s,
   p99 <= 5 s. Skipped, and said so, when `make up` is not running.

    .venv/bin/python benchmarks/alert_intake.py [--deliveries 5000] [--skip-latency]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx

from integrations import http

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _payload(n: int, starts: str, run: str) -> dict:
    return {"version": "4", "status": "firing", "groupKey": f"bench-{n}", "alerts": [{
        "status": "firing", "startsAt": starts, "fingerprint": f"bench-{run}-{n:02d}",
        # each its own outage (a drill id keeps them apart: alerts for one service join one incident)
        "labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox", "instance": f"i-{n}",
                   "drill_id": f"bench-{run}-{n:02d}"},
        "annotations": {"summary": "benchmark alert"}}]}


async def _storm(
    url: str, token: str, deliveries: int, distinct: int, in_flight: int
) -> tuple[float, list[float], dict]:
    """A lean load generator: `in_flight` keep-alive connections, each sending prebuilt
    requests one after another (httpx's per-request cost would otherwise dominate here)."""
    host, port = url.removeprefix("http://").split(":")
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = uuid.uuid4().hex[:6]
    requests = []
    for n in range(distinct):
        body = json.dumps(_payload(n, starts, run)).encode()
        requests.append(f"POST /alerts/alertmanager HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(deliveries))

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        for n in counter:
            t0 = time.perf_counter()
            writer.write(requests[n % distinct])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(in_flight)))
    return time.perf_counter() - start, latencies, statuses


def storm(deliveries: int, distinct: int = 20, in_flight: int = 16) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from flows.service_down import service_down

    token, port = uuid.uuid4().hex, _free_port()
    with prefect_test_harness(server_startup_timeout=60):
        with get_client(sync_client=True) as client:
            dep_id = client.create_deployment(flow_id=client.create_flow(service_down), name="sandbox",
                                              entrypoint="flows/service_down.py:service_down")
        env = {**os.environ, "RUNBOOKS_ALERT_TOKEN": token, "PREFECT_API_URL": PREFECT_API_URL.value(),
               "RUNBOOKS_REDIS_URL": "redis://127.0.0.1:6379/13"}
        import redis

        redis.Redis.from_url(env["RUNBOOKS_REDIS_URL"]).flushdb()
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "runbooks-bench-intake.log"
        intake = subprocess.Popen([sys.executable, "-m", "deployments.intake", "--port", str(port)], cwd=ROOT, env=env,
                                  stdout=log_path.open("w"), stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(100):
                try:
                    if http.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            wall, latencies, statuses = asyncio.run(_storm(url, token, deliveries, distinct, in_flight))
        finally:
            intake.terminate()
            intake.wait(10)
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))
        _close_benchmark_incidents()
    rate = deliveries / wall
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "runbooks-bench-intake.log"
    p50, p99 = _percentile(latencies, 0.5) * 1000, _percentile(latencies, 0.99) * 1000
    errors = [line for line in log_path.read_text().splitlines() if "ERROR" in line]
    if errors:
        print(f"  intake errors ({len(errors)}), first: {errors[0][:200]}")
    print(
        f"storm: {deliveries} deliveries of {distinct} alerts, {in_flight} in flight, in {wall:.2f} s; "
        f"statuses {statuses}"
    )
    print(f"  runs created:          {len(runs)} (expected {distinct}: {'met' if len(runs) == distinct else 'MISSED'})")
    print(f"  deliveries per second: {rate:8.0f}  (target >= 1000: {'met' if rate >= 1000 else 'MISSED'})")
    print(f"  response time p50:     {p50:8.1f} ms")
    print(f"  response time p99:     {p99:8.1f} ms  (target <= 25 ms: {'met' if p99 <= 25 else 'MISSED'})")


def _close_benchmark_incidents() -> None:
    """The intake opened an incident per alert; no worker ran them here: close them."""
    from incidents.store import IncidentStore

    store = IncidentStore()
    for incident in store.list(limit=500, open_only=True):
        if "|drill_id=bench-" in incident.dedup_key:
            store.close(incident.id, "benchmark", "closed by the alert intake benchmark", postmortem_needed=False)


def latency(alerts: int = 20, gap: float = 1.5) -> None:
    intake, api = "http://127.0.0.1:8787", "http://127.0.0.1:4200/api"
    token_file = ROOT / ".run" / "alert-token"
    token = os.environ.get("RUNBOOKS_ALERT_TOKEN") or (token_file.read_text().strip() if token_file.exists() else "")
    try:
        http.get(f"{intake}/healthz", timeout=2).raise_for_status()
        http.get(f"{api}/health", timeout=2).raise_for_status()
    except httpx.HTTPError:
        print("latency: skipped - `make up` is not running (intake :8787 and Prefect :4200 must answer)")
        return
    run = uuid.uuid4().hex[:6]
    sent: dict[str, float] = {}
    starts = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        for n in range(alerts):
            body = _payload(n, starts, run)
            t0 = time.time()
            outcome = client.post(f"{intake}/alerts/alertmanager", json=body).json()
            sent[outcome["started"][0]["flow_run_id"]] = t0
            time.sleep(gap)
    delays: list[float] = []
    deadline = time.monotonic() + 120
    pending = dict(sent)
    while pending and time.monotonic() < deadline:
        for run_id, t0 in list(pending.items()):
            tasks = http.post(
                f"{api}/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"name": {"like_": "probe-endpoints"}}},
            ).json()
            started = [t["start_time"] for t in tasks if t.get("start_time")]
            if started:
                moment = min(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in started)
                delays.append(moment - t0)
                del pending[run_id]
        time.sleep(0.5)
    print(
        f"latency: {alerts} alerts through the make up stack, {gap:g} s apart; {len(pending)} never started diagnosis"
    )
    if delays:
        p50, p99 = _percentile(delays, 0.5), _percentile(delays, 0.99)
        print(f"  alert -> first diagnosis step p50: {p50:5.2f} s  (target <= 2 s: {'met' if p50 <= 2 else 'MISSED'})")
        print(f"  alert -> first diagnosis step p99: {p99:5.2f} s  (target <= 5 s: {'met' if p99 <= 5 else 'MISSED'})")
        print(f"  min {min(delays):.2f} s, max {max(delays):.2f} s, mean {statistics.mean(delays):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-storm", action="store_true")
    args = parser.parse_args()
    if not args.skip_storm:
        storm(args.deliveries)
    if not args.skip_latency:
        latency()


if __name__ == "__main__":
    main()
