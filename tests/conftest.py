"""Shared fixtures: one real Prefect server (on PostgreSQL) per session, the sandbox for the
outside world, a scratch PostgreSQL database for the incident store, and a test config
that points everything at them."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest
import yaml

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ["PREFECT_LOGGING_LEVEL"] = os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING")

# `make test` runs the suite in parallel lanes (tests/lanes.py), each a pytest session of its
# own on the machine's one PostgreSQL and one Redis: each lane has its own databases, Redis
# databases and application role (a connection-limit fault on one lane's role must not refuse
# another lane's sandbox). Lane 0 (a plain `pytest`) keeps the plain names.
LANE = int(os.environ.get("RUNBOOKS_TEST_LANE", "0"))
LANE_REDIS_DBS = ((15, 14, 13, 12), (11, 10, 9, 8), (4, 3, 2, 1))[LANE]  # 5 is `make up`'s, 0 the default


def in_lane(name: str) -> str:
    """A database or role name of this lane."""
    return f"{name}_lane{LANE}" if LANE else name


APP_ROLE = in_lane("sandbox_app")
os.environ["RUNBOOKS_SANDBOX_APP_ROLE"] = APP_ROLE  # the sandbox and config/sandbox.yaml's app_role

from deployments.prefect_private import share_tls_contexts  # noqa: E402
from devstack.stack import SERVER_TASK_RUN_RECORDER  # noqa: E402
from integrations import http  # noqa: E402
from sandbox.pagerduty import routing_key  # noqa: E402
from sandbox.slack import BOT_TOKEN as SLACK_BOT_TOKEN  # noqa: E402
from sandbox.world import GITHUB_TOKEN, Sandbox  # noqa: E402

for _key, _value in SERVER_TASK_RUN_RECORDER.items():  # the test servers record task runs as `make up`'s does
    os.environ.setdefault(_key, _value)
# The lanes run flows in this process, as a run does in the warm worker's fork server
# (deployments/warm_preload.py): with Prefect's clients sharing one TLS context, as there.
share_tls_contexts()

ROOT = Path(__file__).resolve().parent.parent
TEST_DB = in_lane("runbooks_test")
ADMIN_URL = os.environ.get("RUNBOOKS_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKEN_IMAGE = "registry.sandbox.local/acme/api:v2-broken"
APPROVER_CREDENTIALS = {"sam": "sam-credential-7f3a", "tess": "tess-credential-91bc", "rita": "rita-credential-0d42"}
SLACK_SIGNING_SECRET = "slack-signing-canary-5e1d9c"
PAGERDUTY_WEBHOOK_SECRET = "pagerduty-webhook-canary-77ab02"


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The machine's PostgreSQL, as its superuser (a test that looks at the server itself)."""
    return ADMIN_URL


@pytest.fixture(scope="session")
def database_url() -> str:
    """A fresh `runbooks_test` database; the store creates its schema on first use."""
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)")
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{TEST_DB}"
    os.environ["RUNBOOKS_DATABASE_URL"] = url
    return url


APP_DB = in_lane("runbooks_test_app")
PREFECT_DB = in_lane("runbooks_test_prefect")  # the session's Prefect server's own database
CACHE_URL = os.environ.get("RUNBOOKS_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{LANE_REDIS_DBS[0]}")

# Canaries: every secret the runbooks are given carries a marker that must never show up in
# anything they produce (tests/test_zz_secret_canaries.py looks for them at the end of the
# session). The local PostgreSQL trusts the connection, so a password is carried but unused;
# Redis has no password here, so its URL carries the marker as the client name.
PG_CANARY = "canary-pg-5e1d0c"
REDIS_CANARY = "canary-redis-77ab3f"
CACHE_SECRET_URL = CACHE_URL + f"?client_name={REDIS_CANARY}"


def with_password(url: str, password: str = PG_CANARY) -> str:
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")


class _Captured(logging.Handler):
    """Every log record of the test process (message and exception text), for the canary check."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string is still worth keeping
            text = str(record.msg)
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + "".join(traceback.format_exception(*record.exc_info))
        self.texts.append(text)


CAPTURED_LOGS = _Captured()
logging.getLogger().addHandler(CAPTURED_LOGS)


@pytest.fixture(scope="session")
def app_database_url() -> str:
    """The api service's own database (table orders, role sandbox_app), as the DBA sees it."""
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{APP_DB}"


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory, app_database_url: str) -> Iterator[Sandbox]:
    world = Sandbox(state_dir=tmp_path_factory.mktemp("sandbox"), ready_delay=0.3, tick_seconds=0.1,
                    database_url=app_database_url, slack_signing_secret=SLACK_SIGNING_SECRET,
                    pagerduty_webhook_secret=PAGERDUTY_WEBHOOK_SECRET).start()
    yield world
    world.stop()


@pytest.fixture(scope="session")
def test_config(sandbox: Sandbox, database_url: str, app_database_url: str,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """config/sandbox.yaml with short waits, plus `sandbox-short` whose approval times out in 3 s."""
    os.environ.update(RUNBOOKS_SANDBOX_URL=sandbox.url, RUNBOOKS_KUBECONFIG=str(sandbox.runbooks_kubeconfig),
                      RUNBOOKS_SECRET_GITHUB_TOKEN=GITHUB_TOKEN,
                      RUNBOOKS_SECRET_SLACK_WEBHOOK_URL=sandbox.slack_webhook_url,
                      RUNBOOKS_SECRET_SECURITY_WEBHOOK_URL=sandbox.security_webhook_url,
                      RUNBOOKS_SECRET_API_DATABASE_URL=with_password(app_database_url),
                      RUNBOOKS_SECRET_API_CACHE_URL=CACHE_SECRET_URL,
                      RUNBOOKS_SECRET_SLACK_BOT_TOKEN=SLACK_BOT_TOKEN,
                      RUNBOOKS_SECRET_PAGERDUTY_SRE=routing_key("sre"),
                      RUNBOOKS_SECRET_PAGERDUTY_LEADS=routing_key("leads"),
                      RUNBOOKS_SLACK_SIGNING_SECRET=SLACK_SIGNING_SECRET,
                      RUNBOOKS_PAGERDUTY_WEBHOOK_SECRET=PAGERDUTY_WEBHOOK_SECRET)
    raw = yaml.safe_load((ROOT / "config" / "sandbox.yaml").read_text())
    raw.setdefault("intake", {})["resolve_grace_seconds"] = 2  # a flap test waits seconds, not minutes
    env = raw["environments"]["sandbox"]
    env.pop("prometheus", None)  # only the sandbox-prometheus environment below talks to one (the test's own)
    env["approval"].update(timeout_seconds=900, poll_seconds=0.3)  # as in production: longer than P0's 5 min response
    env["timeouts"].update(verify_seconds=30, verify_poll_seconds=0.5, workflow_seconds=30, probe_seconds=2,
                           retry_backoff_seconds=0.1, confirm_seconds=1)  # retried as in production, shorter pauses
    env["kubernetes"]["kubeconfig"] = "${RUNBOOKS_KUBECONFIG}"
    env["services"]["api"]["database"].update(long_query_seconds=2, idle_in_transaction_seconds=1, idle_seconds=1)
    env["services"]["api"]["errors"].update(sample_seconds=1)
    short = yaml.safe_load(yaml.safe_dump(env))
    short["approval"].update(timeout_seconds=3, poll_seconds=0.3)
    raw["environments"]["sandbox-short"] = short
    no_drills = yaml.safe_load(yaml.safe_dump(env))
    no_drills["drills_allowed"] = False
    raw["environments"]["no-drills"] = no_drills
    with_prometheus = yaml.safe_load(yaml.safe_dump(env))
    with_prometheus["prometheus"] = {
        "url": "${RUNBOOKS_TEST_PROMETHEUS_URL:-http://127.0.0.1:9}",
        "error_rate_query": 'sum(rate(http_requests_total{{service="{service}",code=~"5.."}}[5s]))'
                            ' / sum(rate(http_requests_total{{service="{service}"}}[5s]))',
        "latency_query": 'histogram_quantile({quantile}, sum(rate(http_request_duration_seconds_bucket'
                         '{{service="{service}"}}[5s])) by (le))'}
    raw["environments"]["sandbox-prometheus"] = with_prometheus
    matrix = yaml.safe_load(yaml.safe_dump(env))  # the fault matrix: every dependency behind a fault proxy
    matrix["github"]["api_url"] = "${RUNBOOKS_MATRIX_GITHUB_URL:-http://127.0.0.1:9/github}"
    matrix["slack"] = {"webhook_secret": "matrix-slack-url", "security_webhook_secret": "matrix-slack-url"}
    matrix["kubernetes"] = {"kubeconfig": "${RUNBOOKS_MATRIX_KUBECONFIG:-/nonexistent}", "timeout_seconds": 1}
    matrix["prometheus"] = {**with_prometheus["prometheus"], "url": "${RUNBOOKS_MATRIX_PROMETHEUS_URL:-http://127.0.0.1:9}"}
    matrix["services"]["api"]["database"]["dsn_secret"] = "matrix-api-database-url"
    matrix["services"]["api"]["cache"]["url_secret"] = "matrix-api-cache-url"
    matrix["timeouts"].update(http_seconds=1, probe_seconds=1, verify_seconds=5, verify_poll_seconds=0.1,
                              workflow_seconds=8, retry_attempts=2, retry_backoff_seconds=0.05)
    raw["environments"]["sandbox-matrix"] = matrix
    # the matrix's second lane: its own sandbox and proxies (tests/test_fault_matrix.py)
    raw["environments"]["sandbox-matrix-a"] = yaml.safe_load(
        yaml.safe_dump(matrix).replace("RUNBOOKS_MATRIX_", "RUNBOOKS_MATRIX_A_").replace("matrix-", "matrix-a-")
        .replace("RUNBOOKS_SANDBOX_URL", "RUNBOOKS_MATRIX_A_SANDBOX_URL"))
    ingress = yaml.safe_load(yaml.safe_dump(env))  # blocks through the Ingress's deny list
    ingress["services"]["api"]["security"]["block_strategy"] = "ingress_denylist"
    raw["environments"]["sandbox-ingress"] = ingress
    webhook_only = yaml.safe_load(yaml.safe_dump(env))  # a team without a Slack app: incoming webhooks
    for key in ("api_url", "bot_token_secret", "channel", "security_channel"):
        webhook_only["slack"].pop(key)
    raw["environments"]["sandbox-webhook"] = webhook_only
    verified = yaml.safe_load(yaml.safe_dump(env))  # production's rules: verified approvers, four-eyes for P0
    verified["approval"].update(require_verified=True, four_eyes=["P0"])
    raw["environments"]["sandbox-verified"] = verified
    os.environ.update({f"RUNBOOKS_SECRET_APPROVER_{name.upper()}": credential
                       for name, credential in APPROVER_CREDENTIALS.items()})
    path = tmp_path_factory.mktemp("config") / "test.yaml"
    path.write_text(yaml.safe_dump(raw))
    os.environ["RUNBOOKS_CONFIG"] = str(path)
    return path


@pytest.fixture(scope="session")
def prefect_server(test_config: Path):
    """A real Prefect server for the session, started the way Prefect's own test harness starts
    it, but on PostgreSQL: the harness's SQLite answers 503 ("database is locked") when several
    runs write at once, which the fault matrix and the CLI then met as the server's own failure."""
    import prefect.context
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.server.database.dependencies import temporary_database_interface
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )

    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {PREFECT_DB} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {PREFECT_DB}")
    url = ADMIN_URL.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{PREFECT_DB}"
    with temporary_database_interface(), temporary_settings(updates={PREFECT_SERVER_DATABASE_CONNECTION_URL: url}):
        server = SubprocessASGIServer(port=free_port())
        server.start(timeout=90)
        # A flow run's heartbeat thread sleeps in 1 s steps and is joined when the run ends, so
        # every run ends up to 1 s late. Nothing here relies on heartbeats (the server's detection
        # of crashed runs is not under test): off, also for flows run on other threads, which
        # read the process-wide settings.
        try:
            with (
                temporary_settings(updates={PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
                prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()),
            ):
                yield
                APILogWorker.drain_all()
        finally:
            server.stop()


@pytest.fixture(scope="session")
def _pg_stack_once(sandbox, test_config, tmp_path_factory):
    from tests.stack import running_stack

    yield from running_stack(tmp_path_factory)


@pytest.fixture
def pg_stack(_pg_stack_once):
    """The production shape in small (tests/stack.py), started once: the scale-out tests and the
    browser tests share it. Each test gets it settled: server and workers up, no run in flight."""
    fixed = _pg_stack_once.settle()
    if fixed:
        print(f"pg_stack, before this test: {'; '.join(fixed)}")
    return _pg_stack_once


# The machine's one PostgreSQL serves every lane, and by default it takes 100 connections. Two
# tests each hold about half of that at their peak: 50 runbooks at once on the production-shaped
# stack (its server's pool of 40 and the runs' store connections: 63 measured) and the
# scale-out stack's failover (its API servers and store: about 50). Run at the same moment in
# two lanes, PostgreSQL refused the rest ("sorry, too many clients already"): a server waited
# 30 s for a connection, a UI click was lost, a runbook could not reach its store. They take
# turns, across lanes, through a lock file on the machine (PostgreSQL is the machine's too).
POSTGRES_TURN = Path(tempfile.gettempdir()) / "runbooks-tests-postgres-turn.lock"


@contextlib.contextmanager
def postgres_turn_held() -> Iterator[float]:
    """The machine's PostgreSQL turn, held until the block ends: gives how long it waited for it."""
    with POSTGRES_TURN.open("a") as turn:
        asked = time.monotonic()
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            yield time.monotonic() - asked
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)


@pytest.fixture
def postgres_turn() -> Iterator[None]:
    """For a test that needs about half of PostgreSQL's connections: a test of another lane that
    needs the same waits for its turn (and says how long)."""
    with postgres_turn_held() as waited:
        if waited >= 1:
            print(f"waited {waited:.0f} s for another lane's test to give back PostgreSQL's connections")
        yield


@pytest.fixture
def world(sandbox: Sandbox, test_config: Path, database_url: str) -> Sandbox:
    """The sandbox as seeded (api and frontend healthy, no messages, no faults) and no open
    incident, standing containment or runbook lease left by an earlier test (they would be
    joined instead of opened, reviewed by the watch, or hold the service)."""
    sandbox.reset()
    from incidents.store import IncidentStore

    IncidentStore(database_url).ensure_schema()
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE incidents SET resolved_at = now(), status = 'Resolved' WHERE resolved_at IS NULL")
        conn.execute("UPDATE containments SET status = 'lifted', note = 'the sandbox was reset' "
                     "WHERE status = 'active'")  # what stood in the old sandbox is gone with it
        conn.execute("DELETE FROM runbook_leases")  # no runbook works the new sandbox yet, whatever a test left
    return sandbox


@pytest.fixture
def store(database_url: str):
    from incidents.store import IncidentStore

    return IncidentStore(database_url)


def ended(result: dict[str, Any] | Any) -> dict[str, Any]:
    """What a scenario flow called in the test returned: its result, or a failure naming the state
    it ended in (a flow returns a State only when its run was cancelled)."""
    assert isinstance(result, dict), f"the run ended {result!r}"
    return result


def kubectl(world: Sandbox, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """The real kubectl against the sandbox."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not installed: .ci/run installs it (Debian package kubernetes-client)")
    result = subprocess.run([binary, "--kubeconfig", str(world.kubeconfig), "-n", "sandbox", *args],
                            capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
    return result


def break_deploy(world: Sandbox, service: str, image: str) -> None:
    """A bad deploy made with the real kubectl; returns once no pod of the service is ready."""
    kubectl(world, "set", "image", f"deployment/{service}", f"{service}={image}")
    deadline = time.monotonic() + 10
    while world.cluster.ready_pods("sandbox", service) and time.monotonic() < deadline:
        time.sleep(0.05)


def break_api(world: Sandbox) -> None:
    break_deploy(world, "api", BROKEN_IMAGE)


def api_image(world: Sandbox) -> str:
    dep = world.cluster.get("deployments", "sandbox", "api")
    return dep["spec"]["template"]["spec"]["containers"][0]["image"]


class FlowThread:
    """Run a flow on a thread (as a worker would run it in a process) and steer its pause."""

    def __init__(self, fn: Callable[..., Any], **params: Any):
        self.result: Any = None
        self.error: BaseException | None = None
        self.started = datetime.now(timezone.utc) - timedelta(seconds=1)
        self._thread = threading.Thread(target=self._run, args=(fn, params), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], params: dict) -> None:
        try:
            self.result = fn(**params)
        except BaseException as exc:  # noqa: BLE001 - surfaced by join()
            self.error = exc

    def join(self, timeout: float = 120) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"flow still running after {timeout} s"
        if self.error:
            raise self.error
        return self.result

    def wait_paused(self, timeout: float = 60):
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
        from prefect.client.schemas.objects import StateType

        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
                mine = [r for r in runs if r.start_time and r.start_time >= self.started]
                if mine and _input_form_saved(client, mine[0]):
                    return mine[0]
                if not self._thread.is_alive():
                    raise AssertionError(f"flow ended without pausing: {self.error or self.result}")
                time.sleep(0.2)
        raise AssertionError(f"flow did not pause within {timeout} s")

    def resume(self, run_id, **run_input: Any):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.resume_flow_run(run_id, run_input=run_input)


def _input_form_saved(client, run) -> bool:
    """Prefect sets PAUSED first and saves the run's input form just after: a Resume in
    between is refused ("Run input schema not found"), as it would be for a very fast user."""
    keyset = run.state.state_details.run_input_keyset
    if not keyset:
        return True
    try:
        client.read_flow_run_input(run.id, keyset["schema"])
    except Exception:  # noqa: BLE001 - not saved yet (404)
        return False
    return True


def read_all(reader: Callable[..., list], page: int = 200, **filters: Any) -> list:
    """Every row a Prefect client reader returns, page after page (one call stops at 200)."""
    rows: list = []
    while True:
        batch = reader(limit=page, offset=len(rows), **filters)
        rows += batch
        if len(batch) < page:
            return rows


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_daemon(binary: str, args: list[str], package: str) -> tuple[subprocess.Popen, str]:
    """A Debian-packaged server (Prometheus, Alertmanager) on a free loopback port, ready."""
    import httpx

    path = shutil.which(binary) or f"/usr/bin/{binary}"
    if not os.path.exists(path):
        pytest.fail(f"{binary} is not installed: .ci/run installs it (Debian package {package})")
    port = free_port()
    process = subprocess.Popen([path, *args, f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if http.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.terminate()
    pytest.fail(f"{binary} did not become ready within 30 s")


def start_prometheus(home: Path, sandbox: Sandbox) -> tuple[subprocess.Popen, str]:
    """Debian's Prometheus scraping the sandbox's api and its kubelet's volume stats every
    second, data under `home`."""
    config = home / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: sandbox-api
    metrics_path: /services/api/metrics
    params: {{format: [prometheus]}}
    static_configs: [{{targets: ["127.0.0.1:{sandbox.port}"]}}]
  - job_name: sandbox-kubelet
    metrics_path: /_sandbox/kubelet/metrics
    honor_labels: true
    static_configs: [{{targets: ["127.0.0.1:{sandbox.port}"]}}]
""")
    return start_daemon("prometheus", [f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}"],
                        "prometheus")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Marks a test that failed, so fixtures (the browser's screenshot) can tell at teardown."""
    outcome = yield
    if outcome.get_result().failed:
        item.failed = True


# Fixtures that start or reach a service. A test that asks for none of them is a unit test
# (`make unit`: `pytest -m unit`, seconds and no services); everything runs in `make test`.
SERVICE_FIXTURES = {"sandbox", "world", "test_config", "prefect_server", "database_url", "app_database_url", "store",
                    "cache_server", "deployments", "intake", "live_intake", "stack", "drill_env", "inline_worker",
                    "prometheus_server", "second_world", "lanes", "alertmanager", "cli", "slack_intake", "small_cache",
                    "postgres_admin_url"}


@pytest.fixture(autouse=True)
def _no_prefect_in_the_unit_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test has no Prefect API: a lifecycle event it tells is dropped here. Without this,
    Prefect's events client starts an ephemeral server of its own (15-30 s, on SQLite) for the
    first test that tells one. A test that checks the events records them itself
    (tests/test_telemetry_unit.py)."""
    if request.node.get_closest_marker("unit"):
        from tasks import telemetry

        monkeypatch.setattr(telemetry, "emit_event", lambda event, **fields: None)


def pytest_addoption(parser):
    parser.addoption("--reverse", action="store_true",
                     help="run the test modules in reverse order (tests must not depend on their order); "
                          "the secret canaries still run last")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if not SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("services"):
            item.add_marker(pytest.mark.unit)
    if config.getoption("--reverse"):
        modules: dict[str, list] = {}
        for item in items:
            modules.setdefault(item.module.__name__, []).append(item)
        order = sorted(modules, key=lambda name: (name.endswith("test_zz_secret_canaries"), -list(modules).index(name)))
        items[:] = [item for name in order for item in modules[name]]



@pytest.fixture
def small_cache(tmp_path, monkeypatch):
    """A Redis of its own as the api's cache, with a memory limit (2 MB, allkeys-lru) as a real
    cache has; the machine's shared Redis has none, so the cache faults refuse it."""
    import redis

    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(path):
        pytest.fail("redis-server is not installed: .ci/run installs it (Debian package redis-server)")
    port = free_port()
    server = subprocess.Popen([path, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=2)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                server.kill()
                pytest.fail("redis-server did not answer within 10 s")
            time.sleep(0.1)
    monkeypatch.setenv("RUNBOOKS_SECRET_API_CACHE_URL", url)
    yield url
    client.close()
    server.terminate()
    server.wait(10)
