"""`make up HA=1`: the local stack on Prefect's documented scale-out (its self-hosting guide,
"more than one server"), instead of one Prefect process:

  - two API servers started without services (`prefect server start --no-services`, :4201 and
    :4202), the background services in their own process (`prefect server services start`);
  - PostgreSQL for Prefect's database, migrated once before the servers start (each server is
    told not to migrate on start);
  - a Redis of Prefect's own (:8795) for messaging, the events cache, causal ordering,
    concurrency leases and Docket, through `prefect-redis`;
  - Debian's HAProxy in front: Prefect's API and UI on :4200, two alert intakes (:8785, :8786)
    on :8787;
  - two warm workers (metrics on :8793 and :8794).

Everything else (the sandbox, Prometheus, Alertmanager, the store) is as under `make up`."""

from __future__ import annotations

import os
import shutil
import signal
import time

from devstack.stack import (
    BIN,
    HOST,
    INTAKE_PORT,
    POOL,
    PREFECT_PORT,
    REDIS_BIN,
    RUN_DIR,
    WORKER_NAME,
    WORKER_TYPE,
    Component,
    StackError,
    _get_ok,
    _prefect,
    _say,
    _shown,
    _start,
    _worker_online,
    port,
    redis_ready,
    start_together,
)

API_PORTS = (port(4201), port(4202))
INTAKE_PORTS = (port(8785), port(8786))
WORKER_METRICS_PORTS = (port(8793), port(8794))
MESSAGING_PORT = port(8795)
HAPROXY_BIN = shutil.which("haproxy") or "/usr/sbin/haproxy"
HAPROXY_CONFIG = RUN_DIR / "haproxy.cfg"


def server_env() -> dict[str, str]:
    """What every Prefect server process (the API servers and the services) needs to share one
    state: Redis messaging and cache, causal ordering, leases and Docket (Prefect 3.9's settings
    models name them; prefect-redis provides the modules)."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": HOST,
        "PREFECT_REDIS_MESSAGING_PORT": str(MESSAGING_PORT),
        "PREFECT_REDIS_MESSAGING_DB": "0",
        "PREFECT_SERVER_DOCKET_URL": f"redis://{HOST}:{MESSAGING_PORT}/1",
        "PREFECT_SERVER_DATABASE_MIGRATE_ON_START": "false",
    }


def _alive_for(seconds: float):
    """Ready once the process has stayed up this long (the services process listens on no port)."""
    return lambda since: time.time() - since > seconds


def _api_ready(api_port: int):
    return lambda since: _get_ok(f"http://{HOST}:{api_port}/api/health")


def components() -> list[Component]:
    """The scale-out stack's own processes, in the order they start."""
    server = tuple(server_env().items())
    api = [Component(f"prefect-api-{n}", [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port",
                                          str(api_port), "--no-services"],
                     _api_ready(api_port), port=api_port, wait_seconds=120, env=server)
           for n, api_port in enumerate(API_PORTS, 1)]
    workers = [Component(f"worker-{n}", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type",
                                         WORKER_TYPE, "--name", f"{WORKER_NAME}-{n}"],
                         (lambda name: lambda since: _worker_online(since, name))(f"{WORKER_NAME}-{n}"),
                         stop_signal=signal.SIGINT, wait_seconds=90,
                         env=(("RUNBOOKS_WORKER_METRICS_PORT", str(metrics)), ("RUNBOOKS_WORKER_METRICS_HOST", HOST)))
               for n, metrics in enumerate(WORKER_METRICS_PORTS, 1)]
    intakes = [Component(f"intake-{n}", [str(BIN / "python"), "-m", "deployments.intake", "--port", str(intake_port)],
                         (lambda p: lambda since: _get_ok(f"http://{HOST}:{p}/healthz"))(intake_port), port=intake_port,
                         wait_seconds=30)
               for n, intake_port in enumerate(INTAKE_PORTS, 1)]
    return [
        Component("prefect-redis", [REDIS_BIN, "--bind", HOST, "--port", str(MESSAGING_PORT), "--save", "",
                                    "--appendonly", "no"],
                  redis_ready(MESSAGING_PORT), port=MESSAGING_PORT, wait_seconds=20),
        *api,
        Component("prefect-services", [str(BIN / "prefect"), "server", "services", "start"], _alive_for(5),
                  wait_seconds=30, env=server),
        Component("haproxy", [HAPROXY_BIN, "-db", "-f", str(HAPROXY_CONFIG)],
                  lambda since: _get_ok(f"http://{HOST}:{PREFECT_PORT}/api/health"), port=PREFECT_PORT,
                  wait_seconds=30),
        *workers,
        *intakes,
    ]


def haproxy_config() -> str:
    """Round robin over the two API servers and the two intakes. A server is taken out after 3
    failed health checks of 5 s each (a loaded survivor answering in 1-2 s must stay in: with a
    1 s check HAProxy took the last server out and answered 503 to everything); a request whose
    connection was refused (a dead server) is sent to the other at once; websockets (Prefect's
    events) are long-lived tunnels."""
    def backend(name: str, health: str, ports: tuple[int, ...]) -> str:
        servers = "".join(f"  server {name}-{n} {HOST}:{p} check\n" for n, p in enumerate(ports, 1))
        return (f"backend {name}\n  balance roundrobin\n  option httpchk GET {health}\n"
                f"  http-check expect status 200\n  default-server inter 2s fall 3 rise 2\n{servers}")

    return f"""global
  maxconn 4096
  log stdout format raw local0 warning

defaults
  mode http
  log global
  option dontlognull
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout check 5s
  retries 3
  option redispatch 1
  retry-on conn-failure

frontend prefect
  bind {HOST}:{PREFECT_PORT}
  default_backend prefect-api

frontend intake
  bind {HOST}:{INTAKE_PORT}
  default_backend intakes

{backend("prefect-api", "/api/health", API_PORTS)}
{backend("intakes", "/healthz", INTAKE_PORTS)}"""


def start_servers(env: dict[str, str]) -> None:
    """Redis, the one migration, the API servers, the services, and HAProxy in front."""
    if not os.path.exists(HAPROXY_BIN):
        raise StackError("HAProxy is not installed: `make up HA=1` installs it (Debian package haproxy); "
                         "or run `sudo apt-get install haproxy`")
    _check_prefect_redis()
    redis_, api_1, api_2, services, haproxy, *_ = components()
    _start(redis_, env)
    migrate_env = {**env, **server_env()}
    started = time.monotonic()
    _prefect(["server", "database", "upgrade", "-y"], migrate_env, "migrating Prefect's database", timeout=300)
    _say("migrations", f"Prefect's database migrated once in {time.monotonic() - started:.1f} s")
    # The first API server alone: on a new database each server registers Prefect's block types
    # as it starts, and two at once collide on them (a unique violation: the second exits).
    _start(api_1, env)
    start_together([api_2, services], env)
    RUN_DIR.mkdir(exist_ok=True)
    HAPROXY_CONFIG.write_text(haproxy_config())
    _start(haproxy, env)


def start_workers_and_intakes(env: dict[str, str]) -> None:
    start_together(components()[5:], env)
    _await_routed(f"http://{HOST}:{INTAKE_PORT}/healthz", "the intakes")


def _await_routed(url: str, what: str, seconds: float = 30) -> None:
    """Wait until HAProxy routes to `what`: it started before them, marked them down after its
    failed checks, and takes them in again after two good ones (up to 4 s after they answer),
    answering 503 until then. The stack is not ready before an alert can get through."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if _get_ok(url):
            _say("haproxy", f"routes to {what} ({time.monotonic() - started:.1f} s)")
            return
        time.sleep(0.5)
    log = _shown(RUN_DIR / "haproxy.log")
    raise StackError(f"HAProxy did not route to {what} within {seconds:g} s ({url}); see {log}")


def _check_prefect_redis() -> None:
    try:
        import prefect_redis  # noqa: F401
    except ImportError:
        raise StackError("prefect-redis is not installed in the virtual environment: run `make venv` "
                         "(pyproject.toml names it)") from None
