"""Diagnosis fan-out: 50 endpoints that each answer in 200 ms plus one that never answers,
probed by the project's `probe-endpoints` task (inside a flow, on a real Prefect server)
versus the playbook's approach: `curl -f` one after the other, as written (no timeout), which
this benchmark stops at its own overall limit.

    make bench        # or: .venv/bin/python benchmarks/diagnosis_fanout.py [--limit 60]

Targets: project wall time <= 1.5x the probe timeout, and >= 20x faster than sequential.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ENDPOINTS, DELAY, PROBE_TIMEOUT = 50, 0.2, 2.0


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/never"):
            time.sleep(3600)  # accepts the connection, never answers
            return
        time.sleep(DELAY)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve() -> tuple[ThreadingHTTPServer, list[str]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    server.request_queue_size = 128
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    return server, [f"{base}/svc/{n}/health" for n in range(ENDPOINTS)] + [f"{base}/never/health"]


def project(urls: list[str]) -> tuple[float, int]:
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from incidents.check_facts import HealthFacts
    from tasks.diagnosis import probe_endpoints

    @flow(name="bench-diagnosis-fanout")
    def fanout() -> tuple[float, int]:
        start = time.monotonic()
        finding = probe_endpoints(urls, PROBE_TIMEOUT)
        failing = sum(1 for r in finding.facts(HealthFacts).results if not r.ok)
        return time.monotonic() - start, failing

    with prefect_test_harness(server_startup_timeout=60):
        fanout()  # warm-up: the first task run pays for imports and client set-up
        return fanout()


def sequential(urls: list[str], limit: float, max_time: float | None = None) -> tuple[float, bool]:
    flag = f"--max-time {max_time:g} " if max_time else ""
    script = "; ".join(f"curl -f -s -o /dev/null {flag}{shlex.quote(u)} || echo 'Service down'" for u in urls)
    start = time.monotonic()
    try:
        subprocess.run(["bash", "-c", script], timeout=limit, capture_output=True)
        finished = True
    except subprocess.TimeoutExpired:
        finished = False
    return time.monotonic() - start, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=float, default=60.0, help="overall limit for the sequential run (s)")
    args = parser.parse_args()
    server, urls = serve()
    print(f"{ENDPOINTS} endpoints x {DELAY * 1000:.0f} ms + 1 that never answers; probe timeout {PROBE_TIMEOUT:g} s")

    wall, failing = project(urls)
    print(
        f"project  (probe-endpoints task, concurrent):   {wall:6.2f} s  "
        f"({failing} failing; target <= {1.5 * PROBE_TIMEOUT:.1f} s: "
        f"{'met' if wall <= 1.5 * PROBE_TIMEOUT else 'MISSED'})"
    )

    seq, finished = sequential(urls, args.limit)
    state = "finished" if finished else f"stopped at the {args.limit:g} s limit (curl -f has no timeout)"
    print(f"playbook (sequential curl -f, as written):     {seq:6.2f} s  ({state})")
    ratio = seq / wall
    print(f"speed-up vs the playbook as written:           {ratio:6.1f}x  "
          f"(target >= 20x: {'met' if ratio >= 20 else 'MISSED'})")

    fair, _ = sequential(urls, args.limit, max_time=PROBE_TIMEOUT)
    print(f"for reference, sequential curl --max-time {PROBE_TIMEOUT:g}:   {fair:6.2f} s  ({fair / wall:.1f}x)")
    server.shutdown()


if __name__ == "__main__":
    main()
