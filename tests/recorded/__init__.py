"""Vendors' answers in their published formats (one JSON file per vendor, each naming its
source), for the clients' unit tests through httpx.MockTransport (tests/test_clients_unit.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent


def answer(vendor: str, name: str, **fill: Any) -> httpx.Response:
    """The vendor's answer `name`, with `{placeholders}` in it filled from `fill`."""
    text = (HERE / f"{vendor}.json").read_text()
    for key, value in fill.items():
        text = text.replace("{" + key + "}", str(value))
    recorded = json.loads(text)["answers"][name]
    headers = recorded.get("headers", {})
    if "json" in recorded:
        return httpx.Response(recorded["status"], headers=headers, json=recorded["json"])
    return httpx.Response(recorded["status"], headers=headers, text=recorded.get("text", ""))


class Script:
    """A MockTransport that gives, for each request in turn, the next of the scripted answers
    whose (method, path start) matches it; every request is kept, and one that no answer
    matches fails the test."""

    def __init__(self, *steps: tuple[str, str, httpx.Response | Callable[[httpx.Request], httpx.Response]]):
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []
        self.transport = httpx.MockTransport(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for index, (method, start, response) in enumerate(self.steps):
            if request.method == method and str(request.url).startswith(start):
                del self.steps[index]
                return response(request) if callable(response) else response
        raise AssertionError(f"no answer scripted for {request.method} {request.url}")

    def sent(self, index: int) -> Any:
        return json.loads(self.requests[index].content)
