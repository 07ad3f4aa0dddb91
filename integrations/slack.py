"""Slack: an incoming webhook (flat messages) or a Slack app's Web API (threads, message
updates, interactive buttons). Both honour 429 Retry-After through `integrations.http`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Self

import httpx

from integrations.errors import Closing, IntegrationError
from integrations.http import RetryPolicy, request
from integrations.http import client as http_client


def _http(timeout: float, transport: httpx.BaseTransport | None) -> httpx.Client:
    """`transport`: a test's httpx.MockTransport; None sends to the network."""
    return http_client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)), follow_redirects=False,
                       transport=transport)


class SlackWebhook(Closing):
    """The webhook URL is a secret: it is never part of an error message or a log line."""

    def __init__(self, url: str, *, timeout: float = 5.0, retry: RetryPolicy = RetryPolicy(attempts=3),
                 transport: httpx.BaseTransport | None = None):
        if not url.startswith(("https://", "http://")):
            raise ValueError("Slack webhook URL must be an http(s) URL")
        self._url = url
        self.retry = retry
        self._http = _http(timeout, transport)

    def close(self) -> None:
        self._http.close()

    def post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        payload: dict[str, Any] = {"text": text}
        if blocks:
            payload["blocks"] = blocks
        request(self._http, "POST", self._url, what="Slack incoming webhook", retry=self.retry, json=payload)


@dataclass(frozen=True)
class Posted:
    channel: str
    ts: str  # Slack's message id within the channel; a thread is named by its parent's ts


class SlackThreads(Protocol):
    """What a run asks of a Slack app: post (in a thread), update, open a form. SlackApp is the real one;
    the unit tier's fake (tests/fakes.py) implements the same."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
             thread_ts: str | None = None) -> Posted: ...

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None: ...

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None: ...


class SlackApp(Closing):
    """The Web API methods the runbooks use, with a bot token (never logged).

    Slack answers HTTP 200 with `{"ok": false, "error": "..."}` for a refused call, and 429 with
    Retry-After when rate limited (api.slack.com/docs/rate-limits)."""

    def __init__(self, api_url: str, token: str, *, timeout: float = 5.0, retry: RetryPolicy = RetryPolicy(attempts=3),
                 transport: httpx.BaseTransport | None = None):
        self.retry = retry
        self._base = api_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
        self._http = _http(timeout, transport)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        what = f"Slack {method}"
        response = request(self._http, "POST", f"{self._base}/{method}", what=what, retry=self.retry,
                           json=body, headers=self._headers)
        try:
            data = response.json()
        except ValueError:
            raise IntegrationError(what, f"answer is not JSON (HTTP {response.status_code})") from None
        if not isinstance(data, dict) or not data.get("ok"):
            error = data.get("error", "no error given") if isinstance(data, dict) else "unexpected answer"
            raise IntegrationError(what, f"Slack refused: {str(error)[:100]}")
        return data

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
             thread_ts: str | None = None) -> Posted:
        """chat.postMessage; `thread_ts` puts the message in that parent's thread."""
        body: dict[str, Any] = {"channel": channel, "text": text, "unfurl_links": False, "unfurl_media": False}
        if blocks:
            body["blocks"] = blocks
        if thread_ts:
            body["thread_ts"] = thread_ts
        data = self._call("chat.postMessage", body)
        return Posted(str(data.get("channel") or channel), str(data["ts"]))

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        """chat.update: replace a message the app posted."""
        body: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            body["blocks"] = blocks
        self._call("chat.update", body)

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        """views.open: a modal for the person whose interaction carried `trigger_id` (valid 3 s)."""
        self._call("views.open", {"trigger_id": trigger_id, "view": view})


def respond(response_url: str, message: dict[str, Any], *, timeout: float = 5.0,
            retry: RetryPolicy = RetryPolicy(attempts=3), transport: httpx.BaseTransport | None = None) -> None:
    """Answer an interaction through its `response_url` (valid 30 minutes, 5 uses): an
    ephemeral reply to the person who pressed, or `replace_original` to update the message."""
    with _http(timeout, transport) as http:
        request(http, "POST", response_url, what="Slack response_url", retry=retry, json=message)
