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


def _project_errors() -> dict[str, type[BaseException]]:
    """Every exception class defined in the packages a user installs, by module.name."""
    import importlib
    import inspect
    import pkgutil

    found: dict[str, type[BaseException]] = {}
    for package in ("incidents", "integrations", "tasks", "flows", "deployments"):
        for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
            loaded = importlib.import_module(f"{package}.{module.name}")
            for name, value in vars(loaded).items():
                if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == loaded.__name__:
                    found[f"{loaded.__name__}.{name}"] = value
    return found


def test_every_error_the_project_defines_has_one_root_and_a_name_of_its_own():
    from incidents.errors import RunbookError

    errors = _project_errors()
    assert len(errors) > 30, "the scan no longer finds the project's errors"
    stray = sorted(name for name, kind in errors.items() if not issubclass(kind, RunbookError))
    assert not stray, f"errors outside RunbookError: {stray}"
    names = [name.rsplit(".", 1)[1] for name in errors]
    assert sorted(n for n in set(names) if names.count(n) > 1) == [], "two errors share a name"


def test_whether_to_try_again_is_the_error_s_property_not_its_message():
    from incidents.config_base import ConfigError
    from incidents.store import RecordNotFound, StoreUnreachable
    from integrations.errors import gave_up, no_answer, refusal

    assert StoreUnreachable("x").transient and not RecordNotFound("x").transient and not ConfigError("x").transient
    assert no_answer("GET /", "refused").transient and no_answer("GET /", "slow", timed_out=True).transient
    assert not refusal("GET /", "HTTP 404", 404).transient and gave_up("GET /", "HTTP 503", 503).transient


def test_the_cli_maps_a_store_failure_to_its_exit_code_by_transience():
    from deployments.cli_common import FAILED, UNREACHABLE, store_failure
    from incidents.store import RecordNotFound, StoreError, StoreUnreachable

    assert store_failure(StoreUnreachable("incident store at db: refused")).code == UNREACHABLE
    assert store_failure(RecordNotFound("no incident 7")).code == FAILED
    assert store_failure(StoreError("no row where one was certain")).code == FAILED


def test_a_missing_database_is_told_from_the_catalogue_not_the_message(database_url):
    """Only a database that does not exist is created; a role that does not exist (whose message
    also says 'does not exist') is the store's failure, reported as such, and nothing is created."""
    import uuid

    import psycopg
    from psycopg.conninfo import make_conninfo

    from incidents.store import IncidentStore, StoreUnreachable
    from tests.conftest import ADMIN_URL

    name = f"runbooks_probe_{uuid.uuid4().hex[:8]}"
    with pytest.raises(StoreUnreachable, match='role "nobody_here" does not exist'):
        IncidentStore(make_conninfo(database_url, user="nobody_here", dbname=name)).ensure_schema()
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
        try:
            IncidentStore(make_conninfo(database_url, dbname=name)).ensure_schema()
            assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
