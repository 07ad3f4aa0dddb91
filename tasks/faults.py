"""The drill faults, each with inject, the signal a monitor would see, healed, and clean-up.
A fault's live parts (database sessions it holds) stay in this process until clean-up."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import make_conninfo

from incidents.drills import FaultSpec
from integrations.kubernetes import container_image
from integrations.kubernetes_security import (get_config_value, remove_network_policy, secret_metadata,
                                              set_config_value, set_secret_values)
from integrations.probes import probe_all, sample_error_rate
from tasks.context import RunContext, resolve_secret

LEAK_SOURCE = "203.0.113.66"


class FaultNotAvailable(RuntimeError):
    pass


@dataclass
class FaultState:
    spec: FaultSpec
    undo: dict[str, Any] = field(default_factory=dict)
    sessions: list[psycopg.Connection] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)


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


# -- inject ---------------------------------------------------------------------------------------------
def inject(ctx: RunContext, spec: FaultSpec) -> FaultState:
    state = FaultState(spec)
    k = ctx.service.kubernetes
    if spec.name == "bad-deploy":
        with ctx.kubernetes() as kube:
            image = container_image(kube.get_deployment(k.namespace, k.deployment), k.container)
            state.undo["image"] = image
            kube.set_image(k.namespace, k.deployment, k.container, f"{image.rsplit(':', 1)[0]}:drill-{secrets.token_hex(3)}-broken")
    elif spec.name == "error-spike":
        with ctx.kubernetes() as kube:
            state.undo["replicas"] = kube.get_deployment(k.namespace, k.deployment)["spec"].get("replicas", 1)
        httpx.post(f"{sandbox_url()}/_sandbox/load", json={"service": ctx.service_name, "rps": 200}, timeout=5)
    elif spec.name == "pg-lock":
        table = ctx.service.database.drill_table
        holder = psycopg.connect(_app_url(ctx), connect_timeout=5)
        holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')  # validated name; stays open, idle
        state.sessions.append(holder)
        for _ in range(3):
            _run_in_background(state, _app_url(ctx), f'SELECT count(*) FROM "{table}"')
    elif spec.name == "pg-connections":
        db = ctx.service.database
        with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5) as admin:
            state.undo["limit"] = admin.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s",
                                                (db.app_role,)).fetchone()[0]
            admin.execute(f'ALTER ROLE "{db.app_role}" CONNECTION LIMIT 6')
        state.sessions += [psycopg.connect(_app_url(ctx), autocommit=True, connect_timeout=5) for _ in range(5)]
    elif spec.name == "pg-long-query":
        _run_in_background(state, _app_url(ctx), "SELECT pg_sleep(600)")
    elif spec.name == "leaked-credential":
        target = ctx.service.security.secrets[0] if ctx.service.security.secrets else None
        if target is None:
            raise FaultNotAvailable(f"service {ctx.service_name!r} has no security.secrets to plant a canary in")
        canary = f"canary-{secrets.token_hex(8)}"
        with ctx.kubernetes() as kube:
            state.undo["version"] = set_secret_values(kube, k.namespace, target.name, {target.data_keys[0]: canary})
            logging = ctx.service.security.logging
            if logging:
                state.undo["log_level"] = get_config_value(kube, k.namespace, logging.configmap, logging.key)
        state.undo["secret"] = target.name
        state.annotations = {"suspicious_ips": LEAK_SOURCE,
                             "summary": f"canary credential in secret {target.name} used from {LEAK_SOURCE}"}
    else:
        raise FaultNotAvailable(f"no injector for {spec.name}")
    return state


# -- what a monitor sees, and whether it is gone ------------------------------------------------------------
def _db_problem(ctx: RunContext, spec: FaultSpec) -> bool:
    db = ctx.service.database
    with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5,
                         options="-c statement_timeout=5000") as conn:
        if spec.name == "pg-lock":
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND cardinality(pg_blocking_pids(pid)) > 0").fetchone()[0] > 0
        if spec.name == "pg-long-query":
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                                "state = 'active' AND now() - query_start > make_interval(secs => %s) "
                                "AND pid <> pg_backend_pid()", (db.long_query_seconds,)).fetchone()[0] > 0
        used, limit = conn.execute(
            "SELECT (SELECT count(*) FROM pg_stat_activity a WHERE a.usesysid = r.oid), r.rolconnlimit "
            "FROM pg_roles r WHERE r.rolname = %s", (db.app_role,)).fetchone()
        idle_long = conn.execute(
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid WHERE r.rolname = %s "
            "AND a.state = 'idle' AND now() - a.state_change > make_interval(secs => %s)",
            (db.app_role, db.idle_seconds)).fetchone()[0]
        return limit > 0 and used >= db.connection_threshold * limit and idle_long > 0


def signal(ctx: RunContext, state: FaultState) -> bool:
    """True while the fault is visible the way monitoring would see it."""
    name = state.spec.name
    if name == "bad-deploy":
        return not probe_all([ctx.service.url(ctx.service.ok_path)], ctx.config.timeouts.probe_seconds)[0].ok
    if name == "error-spike":
        window, _ = sample_error_rate(ctx.service.url(ctx.service.metrics_path), ctx.service.errors.sample_seconds)
        return window.error_rate >= ctx.service.errors.threshold
    if name.startswith("pg-"):
        return _db_problem(ctx, state.spec)
    if name == "leaked-credential":
        k = ctx.service.kubernetes
        with ctx.kubernetes() as kube:
            return secret_metadata(kube, k.namespace, [state.undo["secret"]])[0].resource_version == state.undo["version"]
    raise FaultNotAvailable(name)


def healed(ctx: RunContext, state: FaultState) -> bool:
    if state.spec.name == "leaked-credential":
        k = ctx.service.kubernetes
        with ctx.kubernetes() as kube:
            return not signal(ctx, state) and kube.rollout_status(k.namespace, k.deployment).done
    return not signal(ctx, state)


# -- clean-up ----------------------------------------------------------------------------------------------
def cleanup(ctx: RunContext, state: FaultState) -> list[str]:
    """Undo whatever the fault still leaves behind, whatever happened; says what it did."""
    done: list[str] = []
    k = ctx.service.kubernetes
    name = state.spec.name
    for conn in state.sessions:
        if not conn.closed:
            conn.close()
            done.append("closed a fault session")
    if state.undo.get("pids"):
        db = ctx.service.database
        with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5) as admin:
            for pid in state.undo["pids"]:
                if admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = %s",
                                 (pid,)).fetchone():
                    done.append(f"ended fault backend {pid}")
    for thread in state.threads:
        thread.join(10)
    if name == "bad-deploy":
        with ctx.kubernetes() as kube:
            if container_image(kube.get_deployment(k.namespace, k.deployment), k.container).endswith("-broken"):
                kube.set_image(k.namespace, k.deployment, k.container, state.undo["image"])
                done.append(f"image restored to {state.undo['image']}")
    elif name == "error-spike":
        httpx.post(f"{sandbox_url()}/_sandbox/load", json={"service": ctx.service_name, "rps": 50}, timeout=5)
        done.append("load back to 50 rps")
        with ctx.kubernetes() as kube:
            if kube.get_deployment(k.namespace, k.deployment)["spec"].get("replicas") != state.undo["replicas"]:
                kube.scale(k.namespace, k.deployment, state.undo["replicas"])
                done.append(f"replicas back to {state.undo['replicas']}")
    elif name == "pg-connections" and "limit" in state.undo:
        db = ctx.service.database
        with psycopg.connect(resolve_secret(db.dsn_secret), autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'ALTER ROLE "{db.app_role}" CONNECTION LIMIT {int(state.undo["limit"])}')
        done.append(f"connection limit of {db.app_role} back to {state.undo['limit']}")
    elif name == "leaked-credential":
        sec = ctx.service.security
        with ctx.kubernetes() as kube:
            if remove_network_policy(kube, k.namespace, sec.block_policy):
                done.append(f"networkpolicy/{sec.block_policy} removed")
            if sec.logging and state.undo.get("log_level") is not None:
                set_config_value(kube, k.namespace, sec.logging.configmap, sec.logging.key, state.undo["log_level"])
                done.append(f"{sec.logging.key} back to {state.undo['log_level']}")
    return done


def wait_for(check, timeout: float, poll: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(poll)
    return False
