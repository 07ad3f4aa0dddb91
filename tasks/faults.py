"""The drill faults, each with inject, the signal a monitor would see, healed, and clean-up.
A fault's live parts (database sessions it holds) stay in this process until clean-up."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from incidents.drills import FaultSpec, Step
from incidents.errors import RunbookError
from integrations import http
from integrations.errors import IntegrationError
from integrations.kubernetes import RESTARTED_AT
from integrations.kubernetes_protocol import Kubernetes
from integrations.probes import probe_all, sample_error_rate
from tasks.context import RunContext, resolve_secret
from tasks.latency import latency_query, quantile_ms

LEAK_SOURCE = "203.0.113.66"


CACHE_DRILL_MAX_BYTES = 256 * 2**20  # a drill fills no bigger cache than this
CACHE_DRILL_VALUE_BYTES = 64 * 1024


class FaultNotAvailable(RunbookError):
    pass


@dataclass
class FaultState:
    spec: FaultSpec
    undo: dict[str, Any] = field(default_factory=dict)
    sessions: list[psycopg.Connection] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    began_at: datetime | None = None  # when its first real fault step went in (a healthy release is none)
    kept_credential: str | None = field(default=None, repr=False)  # a value it changed, to put back; memory only


def _row(cursor: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    """The one row a fault's own query always returns."""
    row = cursor.fetchone()
    if row is None:
        raise FaultNotAvailable("PostgreSQL returned no row where one was expected")
    return row


def _app_url(ctx: RunContext) -> str:
    db = ctx.service.database
    if db is None or not db.app_role:
        raise FaultNotAvailable(f"service {ctx.service_name!r} has no database.app_role to act as the application")
    return make_conninfo(resolve_secret(db.dsn_secret), user=db.app_role)


def sandbox_url() -> str:
    import os

    url = os.environ.get("RUNBOOKS_SANDBOX_URL")
    if not url:
        raise FaultNotAvailable("this fault drives the sandbox's own controls: RUNBOOKS_SANDBOX_URL is not set")
    return url.rstrip("/")


def _run_in_background(state: FaultState, url: str, sql: str) -> None:
    def run() -> None:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                state.undo.setdefault("pids", []).append(conn.info.backend_pid)
                conn.execute(sql)
        except psycopg.Error:
            pass  # ended by the runbook (terminated or cancelled) or by clean-up

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    state.threads.append(thread)


# -- inject: one function per step kind ------------------------------------------------------------------
def _flags_configmap(ctx: RunContext) -> str:
    breaker = ctx.service.circuit_breaker
    return breaker.configmap if breaker and breaker.configmap else f"{ctx.service.kubernetes.deployment}-flags"


def _release(ctx: RunContext, state: FaultState, step: Step) -> None:
    k = ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        state.undo.setdefault("image", kube.deployment(k.namespace, k.deployment).container(k.container).image)
        if step.value == "broken-by-kubectl":
            base = state.undo["image"].rsplit(":", 1)[0]
            kube.set_image(k.namespace, k.deployment, k.container, f"{base}:drill-{secrets.token_hex(3)}-broken")
            return
    response = http.post(f"{sandbox_url()}/_sandbox/deploy", timeout=10,
                         json={"service": ctx.service_name, "version": step.value, "ago_seconds": step.ago_seconds})
    response.raise_for_status()
    if not step.is_fault:  # CI waits for a healthy rollout (`kubectl rollout status`) before it reports done
        with ctx.kubernetes() as kube:
            if not wait_for(lambda: kube.rollout_status(k.namespace, k.deployment).done, 60):
                raise FaultNotAvailable(f"the release {step.value} did not roll out within 60 s")


def _load(ctx: RunContext, state: FaultState, step: Step) -> None:
    with ctx.kubernetes() as kube:
        k = ctx.service.kubernetes
        state.undo.setdefault("replicas", kube.deployment(k.namespace, k.deployment).replicas)
    http.post(f"{sandbox_url()}/_sandbox/load", json={"service": ctx.service_name, "rps": step.value},
              timeout=5).raise_for_status()
    state.undo["load"] = True


def _sandbox_control(ctx: RunContext, state: FaultState, control: str, **body: Any) -> None:
    """One of the sandbox's controls for the target service; clean-up turns it back."""
    http.post(f"{sandbox_url()}/_sandbox/{control}", json={"service": ctx.service_name, **body},
              timeout=5).raise_for_status()
    state.undo[control] = True


def _dependency(ctx: RunContext, state: FaultState, step: Step) -> None:
    _sandbox_control(ctx, state, "dependency", down=True)
    _remember_flag(ctx, state, ctx.service.circuit_breaker.key if ctx.service.circuit_breaker else None)


def _remember_flag(ctx: RunContext, state: FaultState, key: str | None) -> None:
    if key is None:
        return
    with ctx.kubernetes() as kube:
        state.undo.setdefault("flags", {}).setdefault(
            key, kube.get_config_value(ctx.service.kubernetes.namespace, _flags_configmap(ctx), key))


def _flag(ctx: RunContext, state: FaultState, step: Step) -> None:
    """`kubectl patch configmap <service>-flags` turning a feature flag on."""
    _remember_flag(ctx, state, step.value)
    with ctx.kubernetes() as kube:
        kube.set_config_value(ctx.service.kubernetes.namespace, _flags_configmap(ctx), step.value, "on")


def _replicas(ctx: RunContext, state: FaultState, step: Step) -> None:
    k = ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        state.undo.setdefault("replicas", kube.deployment(k.namespace, k.deployment).replicas)
        kube.scale(k.namespace, k.deployment, int(step.value))


def _pg_lock(ctx: RunContext, state: FaultState, step: Step) -> None:
    table = ctx.database_target().drill_table
    holder = psycopg.connect(_app_url(ctx), connect_timeout=5)
    holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')  # validated name; stays open, idle
    state.sessions.append(holder)
    for _ in range(3):
        _run_in_background(state, _app_url(ctx), f'SELECT count(*) FROM "{table}"')


def _pg_idle(ctx: RunContext, state: FaultState, step: Step) -> None:
    """A transaction left open briefly, holding nothing anyone waits for: ordinary, not a fault."""
    session = psycopg.connect(_app_url(ctx), connect_timeout=5)
    session.execute("SELECT 1")
    state.sessions.append(session)


def _pg_connections(ctx: RunContext, state: FaultState, step: Step) -> None:
    db = ctx.database_target()
    with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5) as admin:
        state.undo["limit"] = _row(admin.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s",
                                                 (db.app_role,)))[0]
        admin.execute(f'ALTER ROLE "{db.app_role}" CONNECTION LIMIT 6')
    state.sessions += [psycopg.connect(_app_url(ctx), autocommit=True, connect_timeout=5) for _ in range(5)]


def _pg_long_query(ctx: RunContext, state: FaultState, step: Step) -> None:
    _run_in_background(state, _app_url(ctx), "SELECT pg_sleep(600)")


def _cache_fill(ctx: RunContext, state: FaultState, step: Step) -> None:
    """Keys without a TTL written into the service's cache until it is full (a job that caches
    without expiry): used memory reaches the limit and Redis evicts. Refused on a cache with no
    memory limit (it would take the machine's memory and never evict) or a large one."""
    cache = ctx.cache_target()
    prefix = f"{cache.prefix}drill-{secrets.token_hex(4)}:"
    with ctx.cache(cache.url_secret) as client:
        start = client.health()
        if not start.maxmemory or start.maxmemory > CACHE_DRILL_MAX_BYTES:
            raise FaultNotAvailable(
                f"the cache of {ctx.service_name} ({client.where}) has " + (
                    f"a {start.maxmemory // 2**20} MiB limit: a drill fills one of at most "
                    f"{CACHE_DRILL_MAX_BYTES // 2**20} MiB" if start.maxmemory else
                    "no memory limit (maxmemory 0): filling it would take the machine's memory and never evict"))
        state.undo["cache_keys"] = prefix
        value = "x" * CACHE_DRILL_VALUE_BYTES
        for n in range(2 * start.maxmemory // CACHE_DRILL_VALUE_BYTES + 8):
            try:
                client.set(f"{prefix}{n}", value)
            except IntegrationError:
                break  # full, with nothing it may evict (maxmemory-policy noeviction)
            now = client.health()
            if now.evicted_keys > start.evicted_keys or (now.memory_ratio or 0.0) >= 0.98:
                break


def _leaked_credential(ctx: RunContext, state: FaultState, step: Step) -> None:
    k = ctx.service.kubernetes
    target = ctx.service.security.secrets[0] if ctx.service.security.secrets else None
    if target is None:
        raise FaultNotAvailable(f"service {ctx.service_name!r} has no security.secrets to plant a canary in")
    canary = f"canary-{secrets.token_hex(8)}"
    with ctx.kubernetes() as kube:
        state.undo["version"] = kube.set_secret_values(k.namespace, target.name, {target.data_keys[0]: canary})
        logging = ctx.service.security.logging
        if logging:
            state.undo["log_level"] = kube.get_config_value(k.namespace, logging.configmap, logging.key)
    state.undo["secret"] = target.name
    state.annotations = {"suspicious_ips": LEAK_SOURCE,
                         "summary": f"canary credential in secret {target.name} used from {LEAK_SOURCE}"}


def _config(ctx: RunContext, state: FaultState, step: Step) -> None:
    """A value the service rejects in the ConfigMap its pods read, rolled out by a restart
    (kubectl patch configmap, then kubectl rollout restart): no new image."""
    k = ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        previous = kube.set_config_value(k.namespace, f"{k.deployment}-config", "log_level", str(step.value))
        state.undo.setdefault("config", previous or "info")
        kube.rollout_restart(k.namespace, k.deployment)


def _secret(ctx: RunContext, state: FaultState, step: Step) -> None:
    """The service's credential written again with a trailing newline (`echo $TOKEN | base64`
    into its Secret), rolled out by a restart (kubectl rollout restart): no new image."""
    k = ctx.service.kubernetes
    target = ctx.service.security.secrets[0] if ctx.service.security.secrets else None
    if target is None:
        raise FaultNotAvailable(f"service {ctx.service_name!r} has no security.secrets whose credential to break")
    with ctx.kubernetes() as kube:
        kept = kube.append_to_secret_value(k.namespace, target.name, target.data_keys[0], "\n")
        if state.kept_credential is None:
            state.kept_credential = kept
            state.undo["credential"] = (target.name, target.data_keys[0])
        kube.rollout_restart(k.namespace, k.deployment)


def _latency(ctx: RunContext, state: FaultState, step: Step) -> None:
    _sandbox_control(ctx, state, "latency", ms=step.value)


def _canary(ctx: RunContext, state: FaultState, step: Step) -> None:
    """A canary of another version (one pod beside the stable three), via the sandbox."""
    _sandbox_control(ctx, state, "canary", version=step.value, replicas=1)


def _volume(ctx: RunContext, state: FaultState, step: Step) -> None:
    """The service's volume claim filled to `step.value` percent, via the sandbox."""
    _sandbox_control(ctx, state, "volume", used_percent=step.value)


def _memory(ctx: RunContext, state: FaultState, step: Step) -> None:
    _sandbox_control(ctx, state, "memory", oom=True)


def _node(ctx: RunContext, state: FaultState, step: Step) -> None:
    """The node most of the service's pods run on stops reporting (NotReady), or every node does
    ("all NotReady"), via the sandbox: the pods there stop serving, new ones go elsewhere."""
    k = ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        busiest = Counter(p.node for p in kube.pods(k.namespace, k.deployment) if p.node).most_common(1)
        names = [n.name for n in kube.nodes()] if str(step.value).startswith("all") else [n for n, _ in busiest]
    for name in names:
        http.post(f"{sandbox_url()}/_sandbox/node", json={"node": name, "state": "NotReady"},
                  timeout=5).raise_for_status()
        state.undo.setdefault("nodes", []).append(name)


def _other_broken(ctx: RunContext, state: FaultState, step: Step) -> None:
    """Another service of the namespace crash-loops (kubectl set image): not the target's fault."""
    ns, other = ctx.service.kubernetes.namespace, str(step.value)
    with ctx.kubernetes() as kube:
        image = kube.deployment(ns, other).container(other).image
        state.undo.setdefault("other", {"deployment": other, "image": image})
        kube.set_image(ns, other, other, f"{image.rsplit(':', 1)[0]}:drill-{secrets.token_hex(3)}-broken")


_INJECT = {"release": _release, "other_broken": _other_broken, "memory": _memory, "config": _config,
           "secret": _secret, "latency": _latency, "node": _node, "canary": _canary, "volume": _volume,
           "load": _load, "dependency": _dependency, "flag": _flag, "replicas": _replicas,
           "pg_lock": _pg_lock, "pg_idle": _pg_idle, "pg_connections": _pg_connections,
           "pg_long_query": _pg_long_query, "leaked_credential": _leaked_credential, "cache_fill": _cache_fill}


def inject(ctx: RunContext, spec: FaultSpec) -> FaultState:
    """Every step of the fault, in order. A step that fails leaves what the earlier ones did in
    the state, so clean-up undoes them."""
    state = FaultState(spec)
    for step in spec.steps:
        if step.kind not in _INJECT:
            raise FaultNotAvailable(f"no injector for step {step.kind!r} of {spec.name}")
        time.sleep(step.after_seconds)
        if state.began_at is None and step.is_fault:
            state.began_at = datetime.now(timezone.utc)
        _INJECT[step.kind](ctx, state, step)
    return state


# -- what a monitor sees, and whether it is gone ------------------------------------------------------------
def _db_problem(ctx: RunContext) -> bool:
    """Sessions waiting on a lock, a query past the long-query threshold, or the application
    role near its connection limit with idle sessions: what a PostgreSQL alert rule watches."""
    db = ctx.database_target()
    with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5,
                         options="-c statement_timeout=5000") as conn:
        if _row(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND cardinality(pg_blocking_pids(pid)) > 0"))[0] > 0:
            return True
        if _row(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                             "state = 'active' AND now() - query_start > make_interval(secs => %s) "
                             "AND pid <> pg_backend_pid()", (db.long_query_seconds,)))[0] > 0:
            return True
        used, limit = _row(conn.execute(
            "SELECT (SELECT count(*) FROM pg_stat_activity a WHERE a.usesysid = r.oid), r.rolconnlimit "
            "FROM pg_roles r WHERE r.rolname = %s", (db.app_role,)))
        idle_long = _row(conn.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid WHERE r.rolname = %s "
            "AND a.state = 'idle' AND now() - a.state_change > make_interval(secs => %s)",
            (db.app_role, db.idle_seconds)))[0]
        return limit > 0 and used >= db.connection_threshold * limit and idle_long > 0


def _cache_full(ctx: RunContext) -> bool:
    """The service's cache at its memory threshold: what a Redis memory alert rule watches."""
    cache = ctx.service.cache
    if cache is None:
        return False
    try:
        with ctx.cache(cache.url_secret) as client:
            ratio = client.health().memory_ratio
    except IntegrationError:  # a cache no one can read raises no memory alert either
        return False
    return ratio is not None and ratio >= cache.memory_threshold


def _service_failing(ctx: RunContext) -> bool:
    """Down, or slower than its latency objective (what a latency alert sees)."""
    results = probe_all([ctx.service.url(p) for p in (ctx.service.ok_path, ctx.service.health_path)],
                        ctx.config.timeouts.probe_seconds)
    slo = ctx.service.latency_slo_ms
    return not all(r.ok for r in results) or bool(slo and any(r.seconds * 1000 > slo for r in results))


def _errors_high(ctx: RunContext) -> bool:
    window, _ = sample_error_rate(ctx.service.url(ctx.service.metrics_path), ctx.service.errors.sample_seconds)
    return window.error_rate >= ctx.service.errors.threshold


def _secret_planted(ctx: RunContext, state: FaultState) -> bool:
    k = ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        return kube.secret_metadata(k.namespace, [state.undo["secret"]])[0].resource_version == state.undo["version"]


def signal(ctx: RunContext, state: FaultState) -> bool:
    """True while the fault is visible the way the scenario's alert rule would see it."""
    scenario = state.spec.scenario
    if scenario == "service-down":
        return _service_failing(ctx)
    if scenario == "high-error-rate":
        return _errors_high(ctx)
    if scenario == "database-issues":
        return _db_problem(ctx) or _cache_full(ctx)
    if scenario == "security-incident":
        return _secret_planted(ctx, state)
    raise FaultNotAvailable(scenario)


def healed(ctx: RunContext, state: FaultState) -> bool:
    if state.spec.scenario == "security-incident":
        k = ctx.service.kubernetes
        with ctx.kubernetes() as kube:
            return not signal(ctx, state) and kube.rollout_status(k.namespace, k.deployment).done
    return not signal(ctx, state)


# -- clean-up ----------------------------------------------------------------------------------------------
def cleanup(ctx: RunContext, state: FaultState) -> list[str]:
    """Undo whatever the fault still leaves behind, whatever happened; says what it did."""
    done: list[str] = []
    for conn in state.sessions:
        if not conn.closed:
            conn.close()
            done.append("closed a fault session")
    if state.undo.get("pids"):
        db = ctx.database_target()
        with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5) as admin:
            for pid in state.undo["pids"]:
                if admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)).fetchone():
                    done.append(f"ended fault backend {pid}")
    for thread in state.threads:
        thread.join(10)
    for undo in (_undo_traffic, _undo_flags, _undo_release, _undo_replicas, _undo_connections, _undo_leak,
                 _undo_cache):
        done += undo(ctx, state)
    return done


def _undo_traffic(ctx: RunContext, state: FaultState) -> list[str]:
    done = []
    if state.undo.get("load"):
        http.post(f"{sandbox_url()}/_sandbox/load", json={"service": ctx.service_name, "rps": 50}, timeout=5)
        done.append("load back to 50 rps")
    if state.undo.get("latency"):
        http.post(f"{sandbox_url()}/_sandbox/latency", json={"service": ctx.service_name, "ms": 0}, timeout=5)
        done.append("latency back to none" + _until_prometheus_forgets(ctx))
    if state.undo.get("memory"):
        http.post(f"{sandbox_url()}/_sandbox/memory", json={"service": ctx.service_name, "oom": False}, timeout=5)
        done.append("memory back within its limit")
    if state.undo.get("dependency"):
        http.post(f"{sandbox_url()}/_sandbox/dependency", json={"service": ctx.service_name, "down": False}, timeout=5)
        done.append("dependency back up")
    if state.undo.get("volume"):
        http.post(f"{sandbox_url()}/_sandbox/volume", json={"service": ctx.service_name, "used_percent": 35},
                  timeout=5)
        done.append("volume claim back to 35 % used")
    if state.undo.get("canary"):
        http.post(f"{sandbox_url()}/_sandbox/canary", json={"service": ctx.service_name, "replicas": 0}, timeout=5)
        done.append("canary scaled to 0")
    for node in state.undo.get("nodes", []):
        http.post(f"{sandbox_url()}/_sandbox/node", json={"node": node, "state": "Ready"}, timeout=5)
        done.append(f"node {node} Ready again")
    return done


def _until_prometheus_forgets(ctx: RunContext, timeout: float = 90.0) -> str:
    """Prometheus's p99 keeps the slow answers for its query's window after they end: the next
    fault would find the service slow. Waits until p99 is back under the objective."""
    slo = ctx.service.latency_slo_ms
    if ctx.config.prometheus is None or slo is None:
        return ""
    deadline = time.monotonic() + timeout
    query = latency_query(ctx, 0.99)
    with ctx.prometheus() as client:
        while time.monotonic() < deadline:
            try:
                p99 = quantile_ms(client, query)
            except IntegrationError as exc:
                return f" (Prometheus not asked: {exc})"
            if p99 is None or p99 <= slo:
                return f" (Prometheus p99 {p99 if p99 is not None else 'n/a'} ms again)"
            time.sleep(2)
    return f" (Prometheus p99 still above {slo:g} ms after {timeout:g} s)"


def _undo_flags(ctx: RunContext, state: FaultState) -> list[str]:
    done, k = [], ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        restored = []
        if "config" in state.undo:
            kube.set_config_value(k.namespace, f"{k.deployment}-config", "log_level", state.undo["config"])
            restored.append(f"log_level back to {state.undo['config']}")
        if "credential" in state.undo and state.kept_credential is not None:
            name, key = state.undo["credential"]
            kube.restore_secret_value(k.namespace, name, key, state.kept_credential)
            restored.append(f"secret/{name} key {key} back as it was")
        if restored:  # one restart after both
            _restart_anew(kube, k.namespace, k.deployment)
            done.append(", ".join(restored) + ", pods restarted")
        for key, value in (state.undo.get("flags") or {}).items():
            ns, configmap = ctx.service.kubernetes.namespace, _flags_configmap(ctx)
            if kube.get_config_value(ns, configmap, key) != value:
                kube.set_config_value(ns, configmap, key, value if value is not None else "off")
                done.append(f"{key} back to {value or 'off'}")
    return done


def _restart_anew(kube: Kubernetes, namespace: str, deployment: str) -> None:
    """kubectl rollout restart stamps the pod template to the second: a second restart within
    that second changes nothing and rolls nothing out. Waits for the next second if needed."""
    stamped = kube.deployment(namespace, deployment).template_annotations.get(RESTARTED_AT)
    if stamped is not None and stamped >= datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"):
        time.sleep(1.05 - datetime.now(timezone.utc).microsecond / 1e6)
    kube.rollout_restart(namespace, deployment)


def _undo_release(ctx: RunContext, state: FaultState) -> list[str]:
    k, done = ctx.service.kubernetes, []
    other = state.undo.get("other") or {}
    targets = ([(k.deployment, k.container, state.undo["image"])] if "image" in state.undo else []) + \
        ([(other["deployment"], other["deployment"], other["image"])] if other else [])
    with ctx.kubernetes() as kube:
        for deployment, container, image in targets:
            if kube.deployment(k.namespace, deployment).container(container).image != image:
                kube.set_image(k.namespace, deployment, container, image)
                done.append(f"deployment/{deployment}: image restored to {image}")
    return done


def _undo_replicas(ctx: RunContext, state: FaultState) -> list[str]:
    if "replicas" not in state.undo:
        return []
    k = ctx.service.kubernetes
    with ctx.kubernetes() as kube:
        if kube.deployment(k.namespace, k.deployment).replicas != state.undo["replicas"]:
            kube.scale(k.namespace, k.deployment, state.undo["replicas"])
            return [f"replicas back to {state.undo['replicas']}"]
    return []


def _undo_connections(ctx: RunContext, state: FaultState) -> list[str]:
    if "limit" not in state.undo:
        return []
    db = ctx.database_target()
    with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'ALTER ROLE "{db.app_role}" CONNECTION LIMIT {int(state.undo["limit"])}')
    return [f"connection limit of {db.app_role} back to {state.undo['limit']}"]


def _undo_cache(ctx: RunContext, state: FaultState) -> list[str]:
    """Only the drill's own keys go: whatever else the cache holds stays."""
    prefix = state.undo.get("cache_keys")
    if not prefix:
        return []
    with ctx.cache(ctx.cache_target().url_secret) as client:
        removed = client.delete_prefix(prefix)
    return [f"{removed} drill keys {prefix}* removed from the cache"]


def _undo_leak(ctx: RunContext, state: FaultState) -> list[str]:
    if "secret" not in state.undo:
        return []
    done = []
    k, sec = ctx.service.kubernetes, ctx.service.security
    source = f"{LEAK_SOURCE}/32"
    with ctx.kubernetes() as kube:  # only the drill's own block goes: a real incident's blocks stay
        if source in kube.blocked_by_policy(k.namespace, sec.block_policy):
            left = kube.unblock_cidrs(k.namespace, sec.block_policy, k.deployment, [source])
            done.append(f"{source} unblocked in networkpolicy/{sec.block_policy}"
                        + (f" ({', '.join(left)} stay blocked)" if left else " (policy removed: nothing else in it)"))
        if sec.ingress and source in kube.ingress_denylist(k.namespace, sec.ingress):
            kube.set_ingress_denylist(k.namespace, sec.ingress,
                                      [c for c in kube.ingress_denylist(k.namespace, sec.ingress) if c != source])
            done.append(f"{source} taken off ingress/{sec.ingress}'s deny list")
        if sec.logging and state.undo.get("log_level") is not None:
            kube.set_config_value(k.namespace, sec.logging.configmap, sec.logging.key, state.undo["log_level"])
            done.append(f"{sec.logging.key} back to {state.undo['log_level']}")
    return done


def wait_for(check, timeout: float, poll: float = 0.5) -> bool:
    """True once `check` holds; a check that raises (a service mid-rollout answers 503) has not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (httpx.HTTPError, ValueError, psycopg.Error):
            pass
        time.sleep(poll)
    return False
