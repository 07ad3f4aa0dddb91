"""The warm worker's /metrics (RUNBOOKS_WORKER_METRICS_PORT; none when unset): the worker's own
figures (started, last poll, runs by how their process exited, runs in flight, Prefect API
errors) and its runs' counts (tasks/telemetry.py), which each run's process writes through
prometheus_client's multiprocess mode into a directory the worker makes fresh at each start
and the fork server inherits (PROMETHEUS_MULTIPROC_DIR). docs/observability.md lists every name.

The worker's own figures are plain attributes served by a collector, not prometheus_client
metrics: in a process where PROMETHEUS_MULTIPROC_DIR is set they would be written to the same
directory and counted twice."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

_log = logging.getLogger("runbooks.worker")
PORT_ENV = "RUNBOOKS_WORKER_METRICS_PORT"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
EXITS = ("ok", "error", "killed")


@dataclass(eq=False)  # a registry keys its collectors by identity
class WorkerStats(Collector):
    """What the worker itself counts, served at each scrape."""

    started: float = field(default_factory=time.time)
    last_poll: float = 0.0
    in_flight: int = 0
    prefect_errors: int = 0
    exits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EXITS, 0))

    def polled(self) -> None:
        self.last_poll = time.time()

    def run_started(self) -> None:
        self.in_flight += 1

    def run_ended(self, status_code: int | None) -> None:
        """A run's process has been reaped: 0 is ok, a signal (negative code) killed, else error."""
        self.in_flight = max(0, self.in_flight - 1)
        self.exits[exit_of(status_code)] += 1

    def run_skipped(self) -> None:
        """A run that never got a process (cancelled as it was claimed, or refused)."""
        self.in_flight = max(0, self.in_flight - 1)

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        started = GaugeMetricFamily("runbooks_worker_started_timestamp_seconds", "When this worker started")
        started.add_metric([], self.started)
        poll = GaugeMetricFamily("runbooks_worker_last_poll_timestamp_seconds",
                                 "When this worker last asked Prefect for due runs (0: not yet)")
        poll.add_metric([], self.last_poll)
        in_flight = GaugeMetricFamily("runbooks_worker_runs_in_flight", "Runs whose process runs now")
        in_flight.add_metric([], self.in_flight)
        runs = CounterMetricFamily("runbooks_worker_runs", "Runs' processes reaped, by how they exited",
                                   labels=["exit"])
        for exit_, count in self.exits.items():
            runs.add_metric([exit_], count)
        errors = CounterMetricFamily("runbooks_worker_prefect_errors", "Polls and submissions the Prefect API failed")
        errors.add_metric([], self.prefect_errors)
        yield from (started, poll, in_flight, runs, errors)


def exit_of(status_code: int | None) -> str:
    if status_code == 0:
        return "ok"
    return "killed" if status_code is not None and status_code < 0 else "error"


def prepare_run_metrics() -> str:
    """A fresh directory for the runs' metrics files, in the environment the fork server will
    inherit (call before it starts): one per worker start, under RUNBOOKS_METRICS_DIR (default:
    the temporary directory). Never one inherited from the environment: two workers sharing a
    directory would each serve the other's counts too."""
    base = os.environ.get("RUNBOOKS_METRICS_DIR") or None
    if base:
        os.makedirs(base, exist_ok=True)
    directory = tempfile.mkdtemp(prefix="runbooks-run-metrics-", dir=base)
    os.environ[MULTIPROC_ENV] = directory
    return directory


def serve(stats: WorkerStats, directory: str, port: int | None = None) -> int | None:
    """Serve /metrics on RUNBOOKS_WORKER_METRICS_PORT (or `port`); returns the port, None when unset."""
    if port is None:
        raw = os.environ.get(PORT_ENV, "").strip()
        if not raw:
            return None
        try:
            port = int(raw)
        except ValueError:
            raise ValueError(f"{PORT_ENV}={raw!r} is not a port number") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(stats)
    MultiProcessCollector(registry, path=directory)
    start_http_server(port, addr=os.environ.get("RUNBOOKS_WORKER_METRICS_HOST", "0.0.0.0"), registry=registry)
    _log.info("worker metrics on :%d/metrics (runs' files in %s)", port, directory)
    return port
