"""Prefect Cloud, or any Prefect API that wants a key: the intake, the CLI and the approval path
send PREFECT_API_KEY as `Authorization: Bearer <key>` (as Prefect's client does). Here the test
server's API sits behind a proxy that refuses any other credential; a wrong key is a clear error
at once, never a hang or a retry loop."""

from __future__ import annotations

import re
import time
from urllib.parse import urlencode

import httpx
import pytest
import redis
from starlette.testclient import TestClient

from sandbox.http import Request, Response, serve
from tests.test_cli import cli  # noqa: F401 - fixture
from tests.test_drills import inline_worker  # noqa: F401 - fixture
from tests.test_intake import (
    REDIS_URL,
    TOKEN,
    _alert,
    _am_payload,
    _clean,
    _runs,
    _settings,
    deployments,  # noqa: F401 - fixture
)

pytestmark = pytest.mark.usefixtures("prefect_server")
KEY = "pnu_test-key-of-the-proxy"


@pytest.fixture
def keyed_api(monkeypatch):
    """The Prefect API behind a proxy that wants `Bearer KEY`; PREFECT_API_URL and PREFECT_API_KEY
    point at it (the CLI's environment), PREFECT_API_AUTH_STRING is unset."""
    from prefect.settings import PREFECT_API_URL

    upstream = PREFECT_API_URL.value().rstrip("/")
    seen: list[str] = []

    def app(req: Request) -> Response:
        seen.append(req.header("authorization"))
        if req.header("authorization") != f"Bearer {KEY}":
            return Response.json({"detail": "Unauthorized"}, 401)
        url = upstream + req.path.removeprefix("/api") + (f"?{urlencode(req.query)}" if req.query else "")
        answer = httpx.request(req.method, url, content=req.body, timeout=30,
                               headers={"content-type": req.header("content-type", "application/json")})
        return Response(answer.status_code, answer.content, {"Content-Type": answer.headers.get("content-type", "")})

    server = serve(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.server_address[1]}/api"
    monkeypatch.setenv("PREFECT_API_KEY", KEY)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    monkeypatch.setenv("PREFECT_API_URL", url)
    yield url, seen
    server.shutdown()
    server.server_close()


def test_the_cli_runs_lists_and_approves_through_a_keyed_api(cli, keyed_api, world, capsys, monkeypatch):  # noqa: F811
    url, seen = keyed_api
    monkeypatch.setenv("PREFECT_API_URL", url)  # the cli fixture set the server's own
    assert cli(["sandbox", "break", "bad-deploy"]) == 0
    assert cli(["run", "service-down", "--service", "api", "--timeout", "60"]) == 3
    name = re.search(r"started \S+ run (\S+)", capsys.readouterr().out)[1]
    assert cli(["approvals"]) == 0 and name in capsys.readouterr().out
    assert cli(["approve", name, "--reason", "bad deploy", "--approver", "olga", "--follow", "--timeout", "90"]) == 0
    assert "run Completed" in capsys.readouterr().out
    assert seen and set(seen) == {f"Bearer {KEY}"}

    monkeypatch.setenv("PREFECT_API_KEY", "pnu_wrong")
    started = time.monotonic()
    assert cli(["approvals"]) == 1
    err = capsys.readouterr().err
    assert time.monotonic() - started < 5, "a refused key is not retried"
    assert "refused the credentials (HTTP 401, sent PREFECT_API_KEY)" in err and "pnu_wrong" not in err


def test_the_intake_starts_runs_through_a_keyed_api_and_is_not_ready_with_a_wrong_key(keyed_api, world, deployments,  # noqa: F811
                                                                                  monkeypatch):
    from deployments.intake import create_app

    url, _ = keyed_api
    _clean(deployments)
    with TestClient(create_app(_settings(prefect_api_url=url))) as intake:
        assert intake.get("/readyz").json()["ok"]
        answer = intake.post("/alerts/alertmanager", json=_am_payload(_alert("key-1")),
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200, answer.text
    assert len(_runs(deployments["service-down"])) == 1
    with TestClient(create_app(_settings(prefect_api_url="http://127.0.0.1:9/api"))) as intake:
        down = intake.get("/readyz")  # a Prefect that does not answer is not this pod's fault
        assert down.status_code == 200 and "failed" in down.json()["prefect"], down.text

    redis.Redis.from_url(REDIS_URL).flushdb()
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_wrong")
    with TestClient(create_app(_settings(prefect_api_url=url))) as intake:
        ready = intake.get("/readyz")
        assert ready.status_code == 503 and "refused the credentials" in ready.json()["prefect"]
        started = time.monotonic()
        refused = intake.post("/alerts/alertmanager", json=_am_payload(_alert("key-2")),
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert refused.status_code == 503 and time.monotonic() - started < 5
        assert "refused the credentials" in refused.text and "pnu_wrong" not in refused.text
