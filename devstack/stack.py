"""The local stack behind `make up` / `make down` / `make clean`: the sandbox, a Prefect server
on its own PostgreSQL database (`runbooks_prefect` on the local server, created on first use),
the `incident-response` work pool of the `runbooks-warm` worker type, every deployment in
prefect.yaml, and that worker. Idempotent: what is already running is left alone. `down` stops
exactly what `up` started (the pid files under `.run/` say what that is) and keeps the data;
`clean` drops the Prefect database too.

`make up HA=1` starts the scale-out stack instead (devstack/ha.py). A second stack beside the
first (the failover test's): RUNBOOKS_STACK_DIR for its state, RUNBOOKS_STACK_PORT_OFFSET added
to every port, and its own databases (RUNBOOKS_PREFECT_DATABASE_URL, RUNBOOKS_DATABASE_URL,
RUNBOOKS_SANDBOX_APP_DATABASE_URL) and Redis (RUNBOOKS_REDIS_URL)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import httpx

from deployments.prefect_api import PrefectApi
from devstack.kept import alert_token, approver_credentials, kept_secret
from incidents.config_base import SECRET_ENV_PREFIX
from integrations import http
from integrations.errors import IntegrationError

ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("RUNBOOKS_STACK_DIR") or ROOT)
RUN_DIR = STATE_DIR / ".run"
PREFECT_HOME = STATE_DIR / ".prefect"
SANDBOX_DIR = STATE_DIR / ".sandbox"
HOST = "127.0.0.1"
# Keep a second stack's ports below Linux's ephemeral range (32768-60999): an outgoing
# connection may hold any port there, and a listener on it then cannot start.
PORT_OFFSET = int(os.environ.get("RUNBOOKS_STACK_PORT_OFFSET") or 0)


def port(base: int) -> int:
    return base + PORT_OFFSET


PREFECT_PORT, SANDBOX_PORT, SANDBOX_KUBE_PORT = port(4200), port(8790), port(8791)
PROMETHEUS_PORT, ALERTMANAGER_PORT, INTAKE_PORT, WORKER_METRICS_PORT = port(9090), port(9093), port(8787), port(8793)
# The sandbox api's cache: a Redis of its own with a memory limit, as a real cache has (the
# cache-memory-pressure faults fill it; the machine's shared Redis has no limit to reach).
API_CACHE_PORT = port(8792)
API_CACHE_MAXMEMORY = "2mb"
REDIS_BIN = shutil.which("redis-server") or "/usr/bin/redis-server"
INTAKE_URL = f"http://{HOST}:{INTAKE_PORT}"
TOKEN_FILE = RUN_DIR / "alert-token"
PREFECT_URL = f"http://{HOST}:{PREFECT_PORT}"
SANDBOX_URL = f"http://{HOST}:{SANDBOX_PORT}"
SANDBOX_APP_DATABASE = (os.environ.get("RUNBOOKS_SANDBOX_APP_DATABASE_URL")
                        or "postgresql://postgres@127.0.0.1:5432/runbooks_sandbox_app")
POOL = "incident-response"
# The Prefect server's connections to PostgreSQL. Prefect's default (5, and 10 more under load)
# ran out with 50 runbooks in flight on a 2-core machine: requests waited 30 s for a connection,
# then a run's engine got HTTP 500 reading its own flow run and crashed. 40 in all stays well
# inside PostgreSQL's default max_connections (100). docs/install.md gives the same values for
# Prefect's Helm chart.
SERVER_DATABASE_POOL = {"PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "10",
                        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "30"}
# The task run recorder writes each step's states from the server's events. Prefect's default
# batch of 1 builds and sends the bulk insert for every single event: 37 % of a test server's CPU
# under the fault matrix. Batches of up to 50, written at least every second, cut the matrix's
# CPU (test process and server) from 67.1 to 52.9 s; a step shows in the UI and API at most a
# second after its state changed. docs/install.md gives the same values for Prefect's Helm chart.
SERVER_TASK_RUN_RECORDER = {"PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "50",
                            "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1"}
WORKER_NAME = "runbooks-local-worker"
WORKER_TYPE = "runbooks-warm"  # deployments/warm_worker.py
BIN = Path(sys.executable).parent
# The Prefect server's own database. SQLite only when asked for by name: under a handful of
# runs at once it answers 503 "database is locked" (the UI does not retry, so clicks are lost).
PREFECT_DATABASE = os.environ.get("RUNBOOKS_PREFECT_DATABASE_URL",
                                  "postgresql://postgres@127.0.0.1:5432/runbooks_prefect")


class StackError(RuntimeError):
    pass


def sandbox_secrets() -> dict[str, str]:
    """The sandbox's own fake credentials, as the environment variables a run resolves secrets
    from (a real environment keeps its credentials in Secret blocks)."""
    from sandbox.pagerduty import routing_key
    from sandbox.slack import BOT_TOKEN
    from sandbox.world import GITHUB_TOKEN, SLACK_PATH, SLACK_SECURITY_PATH

    secrets = {"RUNBOOKS_SECRET_SLACK_BOT_TOKEN": BOT_TOKEN}
    for service in ("sre", "leads"):  # config/sandbox.yaml's PagerDuty services
        secrets[f"RUNBOOKS_SECRET_PAGERDUTY_{service.upper()}"] = routing_key(service)
    for name, credential in approver_credentials().items():
        secrets[f"RUNBOOKS_SECRET_APPROVER_{name.upper()}"] = credential
    secrets.update(RUNBOOKS_SECRET_GITHUB_TOKEN=GITHUB_TOKEN,
                   RUNBOOKS_SECRET_SLACK_WEBHOOK_URL=SANDBOX_URL + SLACK_PATH,
                   RUNBOOKS_SECRET_SECURITY_WEBHOOK_URL=SANDBOX_URL + SLACK_SECURITY_PATH,
                   RUNBOOKS_SECRET_API_DATABASE_URL=SANDBOX_APP_DATABASE,
                   RUNBOOKS_SECRET_API_CACHE_URL=f"redis://{HOST}:{API_CACHE_PORT}/0" if os.path.exists(REDIS_BIN)
                   else "redis://127.0.0.1:6379/5")
    return secrets


def stack_env() -> dict[str, str]:
    """The environment every component runs with (the worker passes it on to flow runs)."""
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(PREFECT_HOME), PREFECT_API_URL=f"{PREFECT_URL}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_URL=PREFECT_URL,
        # the warm worker polls when the server announces a run of its pool (else every second);
        # this is only the pause between two polls
        PREFECT_WORKER_QUERY_SECONDS=env.get("PREFECT_WORKER_QUERY_SECONDS", "0.05"),
        # a run held back by a deployment's concurrency limit is offered again after 2 s, not 30
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
        RUNBOOKS_SANDBOX_URL=SANDBOX_URL, RUNBOOKS_KUBECONFIG=str(SANDBOX_DIR / "runbooks.kubeconfig"),
        RUNBOOKS_UI_URL=PREFECT_URL, PYTHONUNBUFFERED="1",
        RUNBOOKS_PROMETHEUS_URL=f"http://{HOST}:{PROMETHEUS_PORT}",
        RUNBOOKS_INTAKE_URL=INTAKE_URL,  # drills raise their alerts through the intake
        # a worker that dies is taken for dead after 3 missed heartbeats (15 s): the Pending runs
        # it had claimed go to a live worker (deployments/warm_worker.py)
        PREFECT_WORKER_HEARTBEAT_SECONDS=env.get("PREFECT_WORKER_HEARTBEAT_SECONDS", "5"),
    )
    if PREFECT_DATABASE != "sqlite":
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = _asyncpg(PREFECT_DATABASE)
        for key, value in SERVER_DATABASE_POOL.items():
            env.setdefault(key, value)
    for key, value in SERVER_TASK_RUN_RECORDER.items():
        env.setdefault(key, value)
    if env.get("PREFECT_API_AUTH_STRING"):  # protect the local server's UI and API with it too
        env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"]
    # The sandbox's own fake credentials; a real environment keeps these in Secret blocks.
    env["RUNBOOKS_ALERT_TOKEN"] = alert_token()
    # what the sandbox's Slack app and PagerDuty sign their requests to the intake with
    env.setdefault("RUNBOOKS_SLACK_SIGNING_SECRET", kept_secret("slack-signing-secret"))
    env.setdefault("RUNBOOKS_PAGERDUTY_WEBHOOK_SECRET", kept_secret("pagerduty-webhook-secret"))
    for key, value in sandbox_secrets().items():
        env.setdefault(key, value)
    return env


def _asyncpg(url: str) -> str:
    return "postgresql+asyncpg://" + url.split("://", 1)[1]


def _prefect_database(create: bool) -> str:
    """Make sure the Prefect server's PostgreSQL database exists; say where it is."""
    if PREFECT_DATABASE == "sqlite":
        return f"SQLite under {PREFECT_HOME.relative_to(ROOT)}/ (asked for: it cannot take several runs at once)"
    import psycopg
    from psycopg import sql

    admin, name = PREFECT_DATABASE.rsplit("/", 1)
    try:
        with psycopg.connect(f"{admin}/postgres", autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists and create:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            if exists and not create:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise StackError(f"the Prefect server's database {name!r} on {admin.split('@')[-1]} could not be "
                         f"{'created' if create else 'dropped'}: {str(exc).strip()}\n  Start PostgreSQL "
                         "(e.g. `pg_ctlcluster --skip-systemctl-redirect 15 main start`) or point "
                         "RUNBOOKS_PREFECT_DATABASE_URL at one.") from None
    if create:
        return f"PostgreSQL database {name} ({'exists' if exists else 'created'})"
    return f"PostgreSQL database {name} ({'dropped' if exists else 'was not there'})"


@dataclass(frozen=True)
class Component:
    name: str
    command: list[str]
    ready: Callable[[float], bool]  # given the time the component was started
    port: int | None = None
    stop_signal: int = signal.SIGTERM
    wait_seconds: float = 60.0
    env: tuple[tuple[str, str], ...] = ()  # this component's own settings, over stack_env()

    @property
    def pid_file(self) -> Path:
        return RUN_DIR / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return RUN_DIR / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None


def redis_ready(port: int) -> Callable[[float], bool]:
    def ready(since: float) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=HOST, port=port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    return ready


def _get_ok(url: str) -> bool:
    """A service that is not Prefect answers 200 (Prefect's credentials go to Prefect only)."""
    try:
        return http.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _prefect_api() -> PrefectApi:
    return PrefectApi(f"{PREFECT_URL}/api", timeout=5)


def _prefect_answers(path: str) -> bool:
    try:
        _prefect_api().call("GET", path)
        return True
    except IntegrationError:
        return False


def _worker_online(since: float, name: str) -> bool:
    """Our worker has sent a heartbeat since it was started (an old worker's ONLINE lingers)."""
    try:
        response = _prefect_api().call("POST", f"/work_pools/{POOL}/workers/filter", json={})
    except IntegrationError:
        return False
    for worker in response.json():
        beat = worker.get("last_heartbeat_time")
        if (
            worker.get("name") == name
            and beat
            and datetime.fromisoformat(beat.replace("Z", "+00:00")).timestamp() >= since
        ):
            return True
    return False


def _port_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMETHEUS_CONFIG = SANDBOX_DIR / "prometheus.yml"


ALERTMANAGER_BIN = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
ALERTMANAGER_CONFIG = SANDBOX_DIR / "alertmanager.yml"
RULES_FILE = ROOT / "deploy" / "prometheus" / "runbooks-rules.yml"
SELF_PAGER = "runbooks-self"  # the sandbox PagerDuty service the self-alerts page


def _write_prometheus_config(intakes: list[int], workers: list[int]) -> None:
    """Scrape every sandbox demo service's /metrics, its kubelet's volume stats, and the runbooks'
    own intakes and workers;
    evaluate the self-alert rules (deploy/prometheus/) and send what fires to Alertmanager."""
    SANDBOX_DIR.mkdir(exist_ok=True)
    jobs = "".join(f"""  - job_name: sandbox-{name}
    metrics_path: /services/{name}/metrics
    params: {{format: [prometheus]}}
    static_configs: [{{targets: ["{HOST}:{SANDBOX_PORT}"]}}]
""" for name in ("api", "frontend"))
    jobs += f"""  - job_name: sandbox-kubelet
    metrics_path: /_sandbox/kubelet/metrics
    honor_labels: true
    static_configs: [{{targets: ["{HOST}:{SANDBOX_PORT}"]}}]
"""
    for job, ports in (("runbooks-intake", intakes), ("runbooks-worker", workers)):
        targets = ", ".join(f'"{HOST}:{p}"' for p in ports)
        jobs += f"""  - job_name: {job}
    static_configs: [{{targets: [{targets}]}}]
"""
    PROMETHEUS_CONFIG.write_text(f"""global: {{scrape_interval: 5s, evaluation_interval: 5s}}
rule_files: ["{RULES_FILE}"]
alerting:
  alertmanagers: [{{static_configs: [{{targets: ["{HOST}:{ALERTMANAGER_PORT}"]}}]}}]
scrape_configs:
{jobs}""")


def self_alert_routing(sandbox_url: str, group_wait: str = "10s") -> str:
    """Alertmanager's configuration: every self-alert straight to the sandbox's PagerDuty (Events
    API v2), never through the runbooks' own intake."""
    from sandbox.pagerduty import routing_key

    return f"""route:
  receiver: runbooks-self
  group_by: [alertname, instance]
  group_wait: {group_wait}
  group_interval: 1m
  repeat_interval: 4h
receivers:
  - name: runbooks-self
    pagerduty_configs:
      - routing_key: {routing_key(SELF_PAGER)}
        url: {sandbox_url}/pagerduty/v2/enqueue
        send_resolved: true
        # every shipped rule's own severity label (critical, warning); Alertmanager's default is "error"
        severity: '{{{{ .CommonLabels.severity }}}}'
"""


COMPONENTS = [
    Component("sandbox", [str(BIN / "python"), "-m", "sandbox", "--port", str(SANDBOX_PORT),
                          "--kube-port", str(SANDBOX_KUBE_PORT), "--state-dir", str(SANDBOX_DIR),
                          "--database-url", SANDBOX_APP_DATABASE],
              lambda since: _get_ok(f"{SANDBOX_URL}/_sandbox/healthz"), port=SANDBOX_PORT, wait_seconds=30),
    Component("api-cache", [REDIS_BIN, "--bind", HOST, "--port", str(API_CACHE_PORT), "--save", "", "--appendonly",
                            "no", "--maxmemory", API_CACHE_MAXMEMORY, "--maxmemory-policy", "allkeys-lru"],
              redis_ready(API_CACHE_PORT), port=API_CACHE_PORT, wait_seconds=20),
    Component("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(PREFECT_PORT)],
              lambda since: _prefect_answers("/health"), port=PREFECT_PORT, wait_seconds=120),
    Component("alertmanager", [ALERTMANAGER_BIN, f"--config.file={ALERTMANAGER_CONFIG}",
                               f"--storage.path={SANDBOX_DIR / 'alertmanager-data'}", "--cluster.listen-address=",
                               f"--web.listen-address={HOST}:{ALERTMANAGER_PORT}"],
              lambda since: _get_ok(f"http://{HOST}:{ALERTMANAGER_PORT}/-/ready"), port=ALERTMANAGER_PORT,
              wait_seconds=30),
    Component("prometheus", [PROMETHEUS_BIN, f"--config.file={PROMETHEUS_CONFIG}",
                             f"--storage.tsdb.path={SANDBOX_DIR / 'prometheus-data'}",
                             f"--web.listen-address={HOST}:{PROMETHEUS_PORT}"],
              lambda since: _get_ok(f"http://{HOST}:{PROMETHEUS_PORT}/-/ready"), port=PROMETHEUS_PORT, wait_seconds=30),
    Component("worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", WORKER_TYPE,
                         "--name", WORKER_NAME],
              lambda since: _worker_online(since, WORKER_NAME), stop_signal=signal.SIGINT, wait_seconds=90,
              env=(("RUNBOOKS_WORKER_METRICS_PORT", str(WORKER_METRICS_PORT)),
                   ("RUNBOOKS_WORKER_METRICS_HOST", HOST))),
    Component("intake", [str(BIN / "python"), "-m", "deployments.intake", "--port", str(INTAKE_PORT)],
              lambda since: _get_ok(f"{INTAKE_URL}/healthz"), port=INTAKE_PORT, wait_seconds=30),
]


def _say(step: str, message: str) -> None:
    print(f"  {step:<16} {message}", flush=True)


@dataclass(frozen=True)
class _Launched:
    """A component's process, just started, and when (`since`: the wall clock its ready check
    is given; `begun`: the monotonic clock its wait is counted from)."""

    component: Component
    process: subprocess.Popen
    since: float
    begun: float


def _launch(component: Component, env: dict[str, str]) -> _Launched | None:
    """Start a component's process without waiting for it; None if it is already running."""
    if component.pid() and component.ready(0):
        _say(component.name, "already running")
        return None
    if component.port and _port_busy(component.port):
        raise StackError(f"{component.name}: port {component.port} on {HOST} is already in use by another program. "
                         f"Stop it (e.g. `ss -ltnp 'sport = :{component.port}'` shows which) and run `make up` again.")
    RUN_DIR.mkdir(exist_ok=True)
    log = component.log_file.open("ab")
    since = time.time() - 1
    process = subprocess.Popen(component.command, cwd=ROOT, env={**env, **dict(component.env)}, stdout=log,
                               stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    component.pid_file.write_text(str(process.pid))
    return _Launched(component, process, since, time.monotonic())


def _await_ready(launched: _Launched) -> None:
    """Wait until the component is ready, within its own wait from its own start."""
    component, process = launched.component, launched.process
    while time.monotonic() - launched.begun < component.wait_seconds:
        if process.poll() is not None:
            tail = component.log_file.read_text(errors="replace").splitlines()[-15:]
            component.pid_file.unlink(missing_ok=True)
            raise StackError(f"{component.name} exited with code {process.returncode}; its log "
                             f"({_shown(component.log_file)}) ends with:\n    " + "\n    ".join(tail))
        if component.ready(launched.since):
            _say(component.name, f"started in {time.monotonic() - launched.begun:.1f} s (pid {process.pid})")
            return
        time.sleep(0.5)
    raise StackError(f"{component.name} did not become ready within {component.wait_seconds:g} s; "
                     f"see {_shown(component.log_file)}")


def start_together(components: list[Component], env: dict[str, str]) -> None:
    """Start components that do not need each other side by side, then wait for each: the
    stack's Prefect processes spend their first seconds importing, which one after another
    added up (the scale-out stack's two API servers, services, workers and intakes)."""
    launched = [started for component in components if (started := _launch(component, env))]
    for started in launched:
        _await_ready(started)


def _start(component: Component, env: dict[str, str]) -> None:
    start_together([component], env)


def _prefect(args: list[str], env: dict[str, str], what: str, timeout: float = 120) -> str:
    result = subprocess.run([str(BIN / "prefect"), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise StackError(f"{what} failed:\n{(result.stdout + result.stderr).strip()[-2000:]}")
    return result.stdout


def _ensure_pool(env: dict[str, str]) -> None:
    response = _prefect_api().call("GET", f"/work_pools/{POOL}", ok=(404,))
    if response.status_code == 200 and response.json().get("type") == WORKER_TYPE:
        _say("work pool", f"{POOL} exists ({WORKER_TYPE})")
        return
    if response.status_code == 200:  # an older stack's process pool: its deployments are registered again below
        _prefect(["work-pool", "delete", POOL], env, f"replacing work pool {POOL}")
    _prefect(["work-pool", "create", POOL, "--type", WORKER_TYPE], env, f"creating work pool {POOL}")
    _say("work pool", f"{POOL} created ({WORKER_TYPE})")


def secret_blocks(env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The Secret blocks to store for the sandbox ({block name: value}) and the names left out
    because `env` holds a value the stack did not supply."""
    stored, skipped = {}, []
    for key, value in sandbox_secrets().items():
        name = key.removeprefix(SECRET_ENV_PREFIX).lower().replace("_", "-")
        if env.get(key) == value:
            stored[name] = value
        else:
            skipped.append(name)
    return stored, skipped


def _store_secrets(env: dict[str, str]) -> None:
    """The sandbox's fake credentials as Prefect Secret blocks too, where production keeps its
    own (tasks.context.resolve_secret): a `runbooks` command run in any shell then finds them,
    not only the processes this stack starts with them in their environment. Only the values
    the stack itself supplies are stored: a credential the caller's shell set (a real token,
    say) stays in the environment of the processes started here and is never written to the
    Prefect database."""
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from pydantic import SecretStr

    stored, skipped = secret_blocks(env)
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        for name, value in stored.items():
            Secret(value=SecretStr(value)).save(name, overwrite=True)
    _say("secrets", f"{len(stored)} Secret blocks for the sandbox's fake credentials ({', '.join(sorted(stored))})")
    if skipped:
        _say("secrets", f"not stored, taken from your shell instead of the sandbox's: {', '.join(sorted(skipped))} "
                        "(the stack's processes use your values, which the sandbox does not accept; "
                        "unset them and run make down and make up for the sandbox's own)")


def _deploy(env: dict[str, str]) -> None:
    from devstack.deploying import DEPLOYED, api_ca_env, deploy_if_changed

    def run_deploy() -> None:
        start = time.monotonic()
        names = [arg for name in DEPLOYED for arg in ("--name", f"*/{name}")]
        _prefect(["--no-prompt", "deploy", *names],
                 {**env, **api_ca_env(env["PREFECT_API_URL"], SANDBOX_DIR / "kubeconfig", RUN_DIR)},
                 f"prefect deploy {' '.join(names)}", timeout=300)
        registered = _prefect_api().call("POST", "/deployments/filter", json={}).json()
        _say("deployments", f"{len(registered)} registered in {time.monotonic() - start:.1f} s")

    deploy_if_changed(ROOT, _prefect_api(), RUN_DIR / "deployed.json", run_deploy, _say)


def _check_store() -> None:
    from incidents.store import IncidentStore, StoreError

    store = IncidentStore()
    try:
        store.ensure_schema()
    except StoreError as exc:
        raise StackError(f"{exc}\n  The incident store needs PostgreSQL. Start it (e.g. `pg_ctlcluster "
                         "--skip-systemctl-redirect 15 main start`) or point RUNBOOKS_DATABASE_URL at one, "
                         "then run `make up` again.") from None
    _say("incident store", f"PostgreSQL {store.where} ready")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _start_monitoring(env: dict[str, str], intakes: list[int], workers: list[int]) -> None:
    """Alertmanager (self-alerts to the sandbox's PagerDuty) and Prometheus, when installed."""
    by_name = {c.name: c for c in COMPONENTS}
    if os.path.exists(ALERTMANAGER_BIN):
        SANDBOX_DIR.mkdir(exist_ok=True)
        ALERTMANAGER_CONFIG.write_text(self_alert_routing(SANDBOX_URL))
        _start(by_name["alertmanager"], env)
    else:
        _say("alertmanager", "not installed (apt-get install prometheus-alertmanager): self-alerts page nobody")
    if os.path.exists(PROMETHEUS_BIN):
        _write_prometheus_config(intakes, workers)
        _start(by_name["prometheus"], env)
    else:
        _say("prometheus", "not installed (apt-get install prometheus): high-error-rate uses /metrics only")


def up(ha: bool = False) -> None:
    env = stack_env()
    shape = " (scale-out: two API servers, two intakes, two workers)" if ha else ""
    print(f"Starting the incident-runbooks stack{shape}", flush=True)
    _check_store()
    by_name = {c.name: c for c in COMPONENTS}
    _start(by_name["sandbox"], env)
    if os.path.exists(REDIS_BIN):
        _start(by_name["api-cache"], env)
    else:
        _say("api-cache", "redis-server not installed: the api's cache is the machine's Redis (db 5), which has no "
                          "memory limit, so the cache-memory-pressure faults refuse it")
    if ha:
        from devstack import ha as scale_out

        _start_monitoring(env, list(scale_out.INTAKE_PORTS), list(scale_out.WORKER_METRICS_PORTS))
    else:
        _start_monitoring(env, [INTAKE_PORT], [WORKER_METRICS_PORT])
    _say("prefect database", _prefect_database(create=True))
    if PREFECT_DATABASE == "sqlite":
        if ha:
            raise StackError("the scale-out stack needs PostgreSQL for Prefect's database "
                             "(RUNBOOKS_PREFECT_DATABASE_URL)")
        _say("warning", "SQLite answers 503 'database is locked' under several runs at once; see docs/alerts.md")
    if ha:
        scale_out.start_servers(env)
    else:
        _start(by_name["prefect-server"], env)
    _ensure_pool(env)
    _store_secrets(env)
    _deploy(env)
    if ha:
        scale_out.start_workers_and_intakes(env)
    else:
        start_together([by_name["worker"], by_name["intake"]], env)
    _ready(env, ha)


def _ready(env: dict[str, str], ha: bool) -> None:
    kubeconfig = _shown(SANDBOX_DIR / "kubeconfig")
    scale_out = ""
    if ha:
        from devstack import ha as layout

        api, intakes = layout.API_PORTS, layout.INTAKE_PORTS
        scale_out = (f"""
  Scale-out         Prefect API servers :{api[0]} and :{api[1]} (no services), services in their own
                    process, Redis messaging :{layout.MESSAGING_PORT}, HAProxy on :{PREFECT_PORT} and
                    :{INTAKE_PORT}, intakes :{intakes[0]} and :{intakes[1]}, two workers""")
    print(
        f"""
Ready.
  Prefect UI        {PREFECT_URL}
  Sandbox           {SANDBOX_URL}  (Kubernetes API https://{HOST}:{SANDBOX_KUBE_PORT})
  Prometheus        http://{HOST}:{PROMETHEUS_PORT}  (scrapes the sandbox services and the runbooks' own /metrics)
  Alertmanager      http://{HOST}:{ALERTMANAGER_PORT}  (self-alerts page the sandbox PagerDuty's {SELF_PAGER})
  Alert intake      {INTAKE_URL}/alerts/alertmanager  (Authorization: Bearer {env["RUNBOOKS_ALERT_TOKEN"]})
  Metrics           {INTAKE_URL}/metrics, worker http://{HOST}:{WORKER_METRICS_PORT}/metrics{scale_out}
  Approval page     {INTAKE_URL}/approvals/<token>  (linked from each APPROVAL NEEDED message; approvers sam,
                    tess, rita with their credentials in .run/approver-credentials)
  Slack thread      {SANDBOX_URL}/_sandbox/slack/messages  (PagerDuty: {SANDBOX_URL}/_sandbox/pagerduty/events)
  Kubeconfig        {kubeconfig}
  Logs              {_shown(RUN_DIR)}/

Try next:
  1. Break the sandbox:   KUBECONFIG={kubeconfig} kubectl -n sandbox set image deployment/api api=registry.sandbox.local/acme/api:v2-broken
  2. Run the runbook:     open {PREFECT_URL}/deployments, pick service-down / sandbox, click Run
  3. Approve the plan:    open the paused run, click Resume, switch approve on, give your name and a reason
     or press Approve in Slack as sam:
                          curl -X POST {SANDBOX_URL}/_sandbox/slack/press -d '{{"user": "U0SANDSAM", "action": "approve"}}'
  4. Or run it all from Slack, as sam typing /incident (answers: {SANDBOX_URL}/_sandbox/slack/messages):
                          curl -X POST {SANDBOX_URL}/_sandbox/slack/command -d '{{"user": "U0SANDSAM", "text": "declare api service-down P1 api is down"}}'
""",  # noqa: E501 - commands to copy, one per line
        flush=True,
    )


def _all_components() -> list[list[Component]]:
    """Every process either stack may have started, in waves to stop them: the API's clients,
    then the API, then what the API and the runs stood on."""
    from devstack import ha as scale_out

    waves = [["intake", "intake-1", "intake-2", "worker", "worker-1", "worker-2"],
             ["haproxy", "prefect-services", "prefect-server", "prefect-api-1", "prefect-api-2"],
             ["prefect-redis", "prometheus", "alertmanager", "api-cache", "sandbox"]]
    by_name = {c.name: c for c in [*COMPONENTS, *scale_out.components()]}
    return [[by_name[name] for name in wave] for wave in waves]


def _stop_wave(components: list[Component], grace: float = 20) -> None:
    """Signal every running component of a wave at once, then wait for them together: a
    process still there after `grace` seconds is killed."""
    running: dict[str, tuple[Component, int]] = {}
    for component in components:
        pid = component.pid()
        if pid is None:
            if component.pid_file.exists() or component in COMPONENTS:
                _say(component.name, "not running")
            component.pid_file.unlink(missing_ok=True)
            continue
        try:
            os.killpg(pid, component.stop_signal)
        except ProcessLookupError:
            pass
        running[component.name] = (component, pid)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(component.pid() for component, _ in running.values()):
        time.sleep(0.1)
    for component, pid in running.values():
        if component.pid():
            os.killpg(pid, signal.SIGKILL)
            _say(component.name, f"killed (pid {pid}) after {grace:.0f} s")
        else:
            _say(component.name, f"stopped (pid {pid})")
        component.pid_file.unlink(missing_ok=True)


def down() -> None:
    print("Stopping the incident-runbooks stack", flush=True)
    for wave in _all_components():
        _stop_wave(wave)


def clean() -> None:
    """`down`, then drop the Prefect server's database (runs, deployments, logs)."""
    down()
    _say("prefect database", _prefect_database(create=False))


COMMANDS: dict[str, Callable[[], None]] = {"up": up, "up-ha": lambda: up(ha=True), "down": down, "clean": clean}


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    command = args[0] if args else "up"
    if command == "up" and "--ha" in args[1:]:
        command = "up-ha"
    if command not in COMMANDS or any(a != "--ha" for a in args[1:]):
        print(f"usage: python -m devstack.stack up [--ha]|down|clean (got {' '.join(args)!r})", file=sys.stderr)
        return 2
    try:
        COMMANDS[command]()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
