"""The one Prefect REST client of the CLI, the intake, the approval page and the dev stack
(deployments/prefect_api.py): Prefect's credentials, the base URL from PREFECT_API_URL, the
project's retry rule, and errors that name the call. Against a local HTTP server that answers
as scripted and records what it was sent."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.prefect_api import AsyncPrefectApi, PrefectApi
from integrations.errors import IntegrationError
from integrations.http import RetryPolicy


class _Scripted(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict, dict]] = []
    seen: list[tuple[str, str, str | None, bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        status, headers, payload = self.answers.pop(0) if self.answers else (200, {}, {})
        data = json.dumps(payload).encode()
        self.send_response(status)
        for key, value in {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def prefect_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    _Scripted.answers, _Scripted.seen = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    yield url
    server.shutdown()


def test_calls_go_to_prefect_api_url_with_prefects_credentials(prefect_url, monkeypatch):
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:s3cret")
    _Scripted.answers = [(200, {}, {"status": "ACCEPT"})]
    assert PrefectApi().resume("run-1", {"approve": True}).json() == {"status": "ACCEPT"}
    method, path, auth, body = _Scripted.seen[0]
    assert (method, path) == ("POST", "/api/flow_runs/run-1/resume")
    assert auth == "Basic " + base64.b64encode(b"admin:s3cret").decode()
    assert json.loads(body) == {"run_input": {"approve": True}}


def test_no_credentials_are_sent_when_none_are_set(prefect_url):
    PrefectApi().flow_run("run-2")
    assert _Scripted.seen[0][:3] == ("GET", "/api/flow_runs/run-2", None)


def test_a_busy_server_is_asked_again_after_its_retry_after(prefect_url):
    _Scripted.answers = [(503, {"Retry-After": "0"}, {"detail": "busy"}), (200, {}, {"id": "d1"})]
    heard = []
    api = PrefectApi(retry=RetryPolicy(attempts=3, backoff=0.01), on_retry=lambda why, pause: heard.append(why))
    assert api.call("GET", "/deployments/name/x").json() == {"id": "d1"}
    assert len(_Scripted.seen) == 2 and heard and "503" in heard[0]


def test_a_refusal_is_an_error_naming_the_call_and_is_not_retried(prefect_url):
    _Scripted.answers = [(409, {}, {"detail": "conflict"})]
    with pytest.raises(IntegrationError) as raised:
        PrefectApi(retry=RetryPolicy(attempts=3, backoff=0.01)).call("POST", "/flow_runs/r/set_state", json={})
    assert raised.value.status == 409 and "POST /flow_runs/r/set_state" in str(raised.value)
    assert len(_Scripted.seen) == 1


def test_a_status_the_caller_expects_is_returned(prefect_url):
    _Scripted.answers = [(404, {}, {"detail": "no such deployment"})]
    assert PrefectApi().call("GET", "/deployments/name/none", ok=(404,)).status_code == 404


def test_the_async_client_keeps_the_same_rules(prefect_url, monkeypatch):
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:s3cret")
    _Scripted.answers = [(503, {"Retry-After": "0"}, {}), (201, {}, {"id": "run-3"})]

    async def create() -> dict:
        api = AsyncPrefectApi()
        try:
            response = await api.call("POST", "/deployments/d1/create_flow_run", json={"parameters": {}},
                                      retry=RetryPolicy(attempts=2, backoff=0.01))
            return dict(response.json())
        finally:
            await api.aclose()

    assert asyncio.run(create()) == {"id": "run-3"}
    assert [s[:3] for s in _Scripted.seen] == [
        ("POST", "/api/deployments/d1/create_flow_run", "Basic " + base64.b64encode(b"admin:s3cret").decode())] * 2


def test_nothing_answering_is_an_unreachable_error(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    with pytest.raises(IntegrationError) as raised:
        PrefectApi(timeout=1).flow_run("run-4")
    assert raised.value.status is None
