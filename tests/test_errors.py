"""Errors by type: how an outside call failed is its class (no answer, no answer in time, an
answer that refused, not found, conflict), so callers choose by type; the CLI maps them to
exit codes in one place."""

from __future__ import annotations

import httpx
import pytest

from integrations.errors import Conflict, IntegrationError, NotFound, Refused, TimedOut, Unreachable
from integrations.http import RetryPolicy, request

ONCE = RetryPolicy(attempts=1)
TWICE = RetryPolicy(attempts=2, backoff=0.01)


def _client(answer) -> httpx.Client:
    return httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer))


@pytest.mark.parametrize("status, kind", [(404, NotFound), (409, Conflict), (403, Refused), (422, Refused)])
def test_an_answer_that_refuses_is_a_refusal_of_its_kind_and_is_not_retried(status, kind):
    calls = []

    def answer(req: httpx.Request) -> httpx.Response:
        calls.append(req)
        return httpx.Response(status, json={"detail": "no"})

    with pytest.raises(kind) as caught:
        request(_client(answer), "GET", "/thing", what="Test GET /thing", retry=TWICE)
    assert type(caught.value) is kind and caught.value.status == status and not caught.value.transient
    assert len(calls) == 1 and f"HTTP {status}" in str(caught.value) and "Test GET /thing" in str(caught.value)


def test_a_busy_server_is_retried_and_then_refused_as_transient():
    with pytest.raises(Refused) as caught:
        request(_client(lambda req: httpx.Response(503)), "GET", "/", what="Test", retry=TWICE)
    assert caught.value.status == 503 and caught.value.transient and "after 2 attempts" in caught.value.reason


def test_no_answer_is_unreachable_and_no_answer_in_time_timed_out():
    def refused(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=req)

    def slow(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=req)

    with pytest.raises(Unreachable) as caught:
        request(_client(refused), "GET", "/", what="Test", retry=ONCE)
    assert type(caught.value) is Unreachable and caught.value.status is None
    with pytest.raises(TimedOut):
        request(_client(slow), "GET", "/", what="Test", retry=ONCE)


def test_redis_and_postgresql_that_do_not_answer_are_unreachable():
    from integrations.cache import CacheClient
    from integrations.postgres import PostgresClient

    with CacheClient("redis://127.0.0.1:1/0", timeout=1.0) as cache, pytest.raises(Unreachable, match="Redis"):
        cache.get("k")
    with pytest.raises(Unreachable, match="PostgreSQL"):
        PostgresClient("postgresql://nobody@127.0.0.1:1/none").ping()


def test_every_kind_is_an_integration_error():
    for kind in (Unreachable, TimedOut, Refused, NotFound, Conflict):
        assert issubclass(kind, IntegrationError)


def test_the_cli_maps_a_failure_to_its_exit_code_by_type():
    from deployments.cli_common import FAILED, UNREACHABLE, api_failure

    assert api_failure(Unreachable("Prefect API GET /x", "ConnectError"), "/x").code == UNREACHABLE
    assert api_failure(TimedOut("Prefect API GET /x", "ReadTimeout"), "/x").code == UNREACHABLE
    refused = api_failure(Refused("Prefect API GET /x", "HTTP 422: bad", status=422), "/x")
    assert refused.code == FAILED and "answered 422" in str(refused)
