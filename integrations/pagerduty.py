"""PagerDuty Events API v2 (developer.pagerduty.com/docs/events-api-v2/overview): trigger,
acknowledge and resolve alerts on a service's routing key, correlated by `dedup_key`."""

from __future__ import annotations

from typing import Any, Literal, Protocol, Self

import httpx

from integrations.errors import Closing, IntegrationError
from integrations.http import RetryPolicy, request
from integrations.http import client as http_client

Action = Literal["trigger", "acknowledge", "resolve"]
# PagerDuty's severities, most severe first
SEVERITIES = ("critical", "error", "warning", "info")


class Pager(Protocol):
    """What a run asks of PagerDuty. PagerDutyEvents is the real one; the unit tier's fake
    (tests/fakes.py) implements the same."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def send(self, routing_key: str, action: Action, dedup_key: str, *, summary: str | None = None,
             source: str | None = None, severity: str | None = None, details: dict[str, Any] | None = None,
             links: list[dict[str, str]] | None = None) -> str: ...


class PagerDutyEvents(Closing):
    """The routing key is a secret: it is never part of an error message."""

    def __init__(self, events_url: str, *, timeout: float = 5.0, retry: RetryPolicy = RetryPolicy(attempts=3),
                 transport: httpx.BaseTransport | None = None):
        """`transport`: a test's httpx.MockTransport; None sends to the network."""
        self._url = events_url.rstrip("/") + "/v2/enqueue"
        self.retry = retry
        self._http = http_client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), follow_redirects=False,
                                 transport=transport)

    def close(self) -> None:
        self._http.close()

    def send(self, routing_key: str, action: Action, dedup_key: str, *, summary: str | None = None,
             source: str | None = None, severity: str | None = None, details: dict[str, Any] | None = None,
             links: list[dict[str, str]] | None = None) -> str:
        """Enqueue one event; returns the dedup_key PagerDuty accepted (202 Accepted)."""
        if not dedup_key or len(dedup_key) > 255:
            raise ValueError("dedup_key must be 1 to 255 characters")
        event: dict[str, Any] = {"routing_key": routing_key, "event_action": action, "dedup_key": dedup_key}
        if action == "trigger":
            if severity not in SEVERITIES:
                raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}")
            event["payload"] = {"summary": (summary or "incident")[:1024], "source": source or "incident-runbooks",
                                "severity": severity, **({"custom_details": details} if details else {})}
            if links:
                event["links"] = links
            event["client"] = "incident-runbooks"
        what = f"PagerDuty {action}"
        response = request(self._http, "POST", self._url, what=what, retry=self.retry, json=event)
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code != 202 or data.get("status") != "success":
            raise IntegrationError(
                what,
                f"not accepted (HTTP {response.status_code}: {str(data.get('message'))[:100]})",
                status=response.status_code,
            )
        return str(data.get("dedup_key") or dedup_key)
