"""HTTP probes of a service's /__ok, /health and /metrics, run concurrently, each bounded by
its own timeout. A probe measures, so it is never retried."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from integrations import parallel
from integrations.http import client as http_client


@dataclass(frozen=True)
class ProbeResult:
    url: str
    ok: bool
    status: int | None
    seconds: float
    error: str | None = None
    body: Any = None  # parsed JSON when the endpoint answered JSON, else the text (truncated)

    def describe(self) -> str:
        if self.ok:
            return f"{self.url}: HTTP {self.status} in {self.seconds * 1000:.0f} ms"
        why = f"HTTP {self.status}" if self.status else self.error
        return f"{self.url}: FAILED ({why}) after {self.seconds * 1000:.0f} ms"


def probe(client: httpx.Client, url: str, timeout: float) -> ProbeResult:
    """GET `url` like `curl -f`: a status of 400 or more is a failure."""
    start = time.monotonic()
    try:
        response = client.get(url, timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)))
    except httpx.TimeoutException:
        return ProbeResult(url, False, None, time.monotonic() - start, f"no answer within {timeout:g} s")
    except httpx.HTTPError as exc:
        return ProbeResult(url, False, None, time.monotonic() - start, f"{type(exc).__name__}: {exc}")
    seconds = time.monotonic() - start
    body: Any
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        body = response.text[:2000]
    return ProbeResult(url, response.status_code < 400, response.status_code, seconds, body=body)


def probe_all(urls: list[str], timeout: float = 5.0, max_parallel: int = 64) -> list[ProbeResult]:
    """Probe every URL at once (up to `max_parallel` in flight); results keep the input order.

    The whole call takes about as long as the slowest probe, bounded by `timeout`.
    """
    if not urls:
        return []
    deadline = timeout + 1.0  # a hard stop even if a server trickles bytes past the read timeout
    limits = httpx.Limits(max_connections=max_parallel, max_keepalive_connections=max_parallel)
    with http_client(limits=limits, follow_redirects=False) as client:
        # daemon threads: a Cancel that lands while a probe waits on a hung service ends the
        # process at once (integrations/parallel.py)
        futures = parallel.submit_all(lambda url: probe(client, url, timeout), urls, max_parallel, "probe")
        results = []
        for url, future in zip(urls, futures):
            try:
                results.append(parallel.result(future, timeout=deadline))
            except Exception as exc:  # noqa: BLE001 - a probe that broke is a failed probe
                results.append(ProbeResult(url, False, None, deadline, f"{type(exc).__name__}: {exc}"))
        return results


@dataclass(frozen=True)
class ErrorMetrics:
    requests: float
    errors: float
    # per version (the image tag that served them), when the service labels its counters so
    by_version: dict[str, tuple[float, float]] = field(default_factory=dict, compare=False)
    seconds: float = field(default=0.0, compare=False)  # how long the window was (0: totals since start)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the Prometheus text exposition format: (name, labels, value), read by
    prometheus_client's parser (label values may hold any character, `}` included, as in
    `path="/orders/{id}"`). Raises ValueError for text that is not in that format."""
    return [(sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text) for sample in family.samples]


def error_metrics(body: Any) -> ErrorMetrics | None:
    """Requests and errors from /metrics: JSON `errors`/`requests` (what the playbook's
    `jq '.errors'` reads) or Prometheus `http_requests_total` with a `code` label."""
    if isinstance(body, dict):
        if "errors" in body:
            try:
                return ErrorMetrics(float(body.get("requests") or 0), float(body["errors"]), _versions(body))
            except (TypeError, ValueError):
                return None
        return None
    if isinstance(body, str):
        total = errors = 0.0
        found = False
        versions: dict[str, tuple[float, float]] = {}
        try:
            samples = parse_prometheus(body)
        except ValueError:
            return None
        for name, labels, value in samples:
            if name == "http_requests_total":
                found = True
                failed = value if labels.get("code", "").startswith("5") else 0.0
                total += value
                errors += failed
                if labels.get("version"):
                    seen = versions.get(labels["version"], (0.0, 0.0))
                    versions[labels["version"]] = (seen[0] + value, seen[1] + failed)
        return ErrorMetrics(total, errors, versions) if found else None
    return None


def _versions(body: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """JSON `versions: {tag: {requests, errors}}`; anything malformed is left out."""
    found = body.get("versions")
    if not isinstance(found, dict):
        return {}
    return {str(v): (float(c.get("requests") or 0), float(c.get("errors") or 0))
            for v, c in found.items() if isinstance(c, dict)}


SETTLE_AFTER_SECONDS = 1.0  # the shortest window that may settle early
SETTLE_MIN_REQUESTS = 30
SETTLE_POLL_SECONDS = 0.25


def wilson_interval(errors: float, requests: float, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of an error rate measured on `requests` requests."""
    if requests <= 0:
        return 0.0, 1.0
    p, n = errors / requests, requests
    centre, spread = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / (1 + z * z / n)), min(1.0, (centre + spread) / (1 + z * z / n))


def settled(window: ErrorMetrics, threshold: float) -> bool:
    """Enough requests that the error rate is surely above the threshold, or surely below it
    (its 95 % interval wholly on one side): a longer window would not change the finding."""
    if window.requests < SETTLE_MIN_REQUESTS:
        return False
    low, high = wilson_interval(window.errors, window.requests)
    return low > threshold or high < threshold


def sample_error_rate(url: str, seconds: float, timeout: float = 5.0,
                      threshold: float | None = None) -> tuple[ErrorMetrics, ErrorMetrics]:
    """Read /metrics at the start and again `seconds` later: the counters' difference is the
    recent error rate (the totals since start would hide a fresh spike). Given a `threshold`,
    the window ends early -- read every SETTLE_POLL_SECONDS from SETTLE_AFTER_SECONDS on --
    once the rate is surely above or below it. Returns (window, totals)."""
    with http_client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0))) as client:
        first, started = _read_at(client, url)
        time.sleep(min(seconds, SETTLE_AFTER_SECONDS) if threshold is not None else seconds)
        while True:
            second, at = _read_at(client, url)
            elapsed = at - started
            window = _difference(first, second, elapsed)
            if threshold is None or elapsed >= seconds or settled(window, threshold):
                return window, second
            time.sleep(min(SETTLE_POLL_SECONDS, max(0.0, seconds - elapsed)))


def _read_at(client: httpx.Client, url: str) -> tuple[ErrorMetrics, float]:
    """The counters, and when the service read them: the midpoint of the request. Timing the
    window from before the first request to after the second counted the requests' latency as
    window time, so a slow /metrics (a busy host) made the load read low and a scale-up could
    be judged unneeded (a CI pass on a loaded 2-core machine once abstained on node-not-ready)."""
    before = time.monotonic()
    metrics = _counters(client, url)
    return metrics, (before + time.monotonic()) / 2


def _difference(first: ErrorMetrics, second: ErrorMetrics, seconds: float) -> ErrorMetrics:
    versions = {v: (r - first.by_version.get(v, (0.0, 0.0))[0], e - first.by_version.get(v, (0.0, 0.0))[1])
                for v, (r, e) in second.by_version.items()}
    return ErrorMetrics(second.requests - first.requests, second.errors - first.errors, versions, seconds)


def _counters(client: httpx.Client, url: str) -> ErrorMetrics:
    response = client.get(url)
    response.raise_for_status()
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    metrics = error_metrics(body)
    if metrics is None:
        raise ValueError(f"{url} has neither JSON errors/requests nor http_requests_total")
    return metrics
