"""The error-rate window that ends once the rate is surely on one side of the threshold."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from integrations.probes import ErrorMetrics, sample_error_rate, settled, wilson_interval


def test_the_interval_narrows_with_requests_and_settles_only_when_wholly_on_one_side():
    low, high = wilson_interval(0, 100)
    assert low == 0.0 and 0.035 < high < 0.04
    assert not settled(ErrorMetrics(50, 0), 0.05)  # 0 of 50 could still be 7 %
    assert settled(ErrorMetrics(100, 0), 0.05)
    assert settled(ErrorMetrics(37, 15), 0.05)  # 40 % of 37: surely above 5 %
    assert not settled(ErrorMetrics(100, 7.5), 0.05)  # 7.5 %: could be either side
    assert not settled(ErrorMetrics(20, 20), 0.05)  # too few requests to say anything


@pytest.fixture
def counters():
    """A /metrics whose counters grow by the clock: 100 requests a second, `share` failing."""
    state = {"share": 0.4, "start": time.monotonic(), "latency": 0.0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server's name
            time.sleep(state["latency"] / 2)  # the way in; the counters are read halfway
            requests = (time.monotonic() - state["start"]) * 100
            time.sleep(state["latency"] / 2)  # and the way back
            body = json.dumps({"requests": int(requests), "errors": int(requests * state["share"])}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/metrics", state
    server.shutdown()


def test_a_clear_spike_ends_the_window_early_and_an_unclear_rate_uses_all_of_it(counters):
    url, state = counters
    window, _ = sample_error_rate(url, 2.0, threshold=0.05)
    assert 1.0 <= window.seconds < 1.6 and window.error_rate > 0.3, window
    state["share"] = 0.07
    window, _ = sample_error_rate(url, 2.0, threshold=0.05)
    assert window.seconds >= 2.0, window
    window, _ = sample_error_rate(url, 2.0)  # no threshold: the whole window, as the verification reads it
    assert window.seconds >= 2.0


def test_the_load_is_read_right_when_the_metrics_answer_slowly(counters):
    """The window is timed from when the service read its counters, not from before the first
    request to after the second: a /metrics that takes 0.4 s each way around does not make
    100 rps read as 70."""
    url, state = counters
    state["latency"], state["share"] = 0.4, 0.0
    window, _ = sample_error_rate(url, 1.0)
    assert 95 <= window.requests / window.seconds <= 105, (window.requests, window.seconds)


_PROBING_PROCESS = """
import signal, sys, threading
from integrations import parallel
from integrations.probes import probe_all

def stop(*_):  # as Prefect's engine turns SIGTERM into an exception, and gather() stops the waits
    parallel.stop_waiting()
    raise SystemExit(0)

signal.signal(signal.SIGTERM, stop)
probing = lambda: probe_all([sys.argv[1], sys.argv[1]], timeout=30)
if sys.argv[2] == "task-thread":  # as a check does, on a thread of Prefect's, which the exit joins
    threading.Thread(target=probing).start()
    print("probing", flush=True)
    threading.Event().wait()
print("probing", flush=True)
probing()
"""


@pytest.mark.parametrize("where", ["main-thread", "task-thread"])
def test_a_process_told_to_stop_does_not_wait_for_its_probes_of_a_hung_service(tmp_path, where):
    """A Cancel (SIGTERM) that lands while probes wait on a service that accepts and never
    answers ends the process at once, not after the probes' 30 s timeout: whether the run's
    main thread waits for the probes (verification) or a thread of Prefect's does (a check)."""
    hung = socket.create_server(("127.0.0.1", 0))  # accepts (the backlog) and never answers
    try:
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/health"
        script = tmp_path / "probing.py"
        script.write_text(_PROBING_PROCESS)
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        child = subprocess.Popen([sys.executable, str(script), url, where], stdout=subprocess.PIPE, text=True,
                                 env=env)
        assert child.stdout is not None and child.stdout.readline().strip() == "probing"
        time.sleep(0.5)  # the probes are connected and waiting
        assert child.poll() is None, "the probes did not wait on the hung service"
        stopped = time.monotonic()
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=30)
        assert time.monotonic() - stopped < 2.0, "the process waited for its probes before it ended"
    finally:
        hung.close()
