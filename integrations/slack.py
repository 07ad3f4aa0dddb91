"""Slack incoming webhooks: text plus Block Kit, honouring 429 Retry-After."""

from __future__ import annotations

from typing import Any

import httpx

from integrations.errors import Closing
from integrations.http import RetryPolicy, request, client as http_client


class SlackWebhook(Closing):
    """The webhook URL is a secret: it is never part of an error message or a log line."""

    def __init__(self, url: str, *, timeout: float = 5.0, retry: RetryPolicy = RetryPolicy(attempts=3)):
        if not url.startswith(("https://", "http://")):
            raise ValueError("Slack webhook URL must be an http(s) URL")
        self._url = url
        self.retry = retry
        self._http = http_client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)))

    def close(self) -> None:
        self._http.close()

    def post(self, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        payload: dict[str, Any] = {"text": text}
        if blocks:
            payload["blocks"] = blocks
        request(self._http, "POST", self._url, what="Slack incoming webhook", retry=self.retry, json=payload)
