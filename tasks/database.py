"""Database checks and remedies (playbook Scenario 3). Checks return Findings; remedies need
the grant for their exact action and re-check every backend before signalling it."""

from __future__ import annotations

import time

from incidents.action_params import ClearCache, Sessions
from incidents.check_facts import (
    CACHE,
    CONNECTIONS,
    REACH,
    REPLICATION,
    SESSIONS,
    CacheFacts,
    ConnectionScope,
    ConnectionsFacts,
    ReplicationFacts,
    SessionBrief,
    SessionsFacts,
)
from incidents.findings import Finding, unavailable
from incidents.plans import Grant, Plan, PlannedAction, require_grant
from integrations.errors import IntegrationError
from integrations.postgres import Session, root_blockers
from integrations.probes import probe_all
from tasks.context import RunContext, SecretNotFound
from tasks.deploys import ActionResult, Verification
from tasks.steps import run_logger, step

_ERRORS = (IntegrationError, SecretNotFound)


def _brief(s: Session, seconds: float | None = None, waiters: list[int] | None = None) -> SessionBrief:
    """The session as a check reports it: `seconds` in its state unless given (a query's own time)."""
    blocking = {} if waiters is None else {"waiters": waiters}  # set only for a root blocker
    return SessionBrief(pid=s.pid, role=s.role, superuser=s.superuser, state=s.state,
                        backend_start=s.backend_start.isoformat(),
                        seconds=round(s.seconds_in_state, 1) if seconds is None else seconds, query=s.query[:200],
                        **blocking)


@step("check-database-reachable")
def check_reachable(ctx: RunContext) -> Finding:
    """pg_isready from the runbook's side: connect and answer within the timeouts."""
    try:
        seconds = ctx.postgres().ping()
    except SecretNotFound as exc:
        return unavailable(REACH, exc)
    except IntegrationError as exc:
        return Finding(REACH, False, f"not answering: {exc.reason}")
    return Finding(REACH, True, f"answers in {seconds * 1000:.0f} ms")


@step("check-database-sessions")
def check_sessions(ctx: RunContext) -> Finding:
    """Blocking chains (pg_blocking_pids) with their root blockers, sessions idle in a
    transaction, and long-running queries."""
    db = ctx.database_target()
    try:
        sessions = ctx.postgres().sessions()
    except _ERRORS as exc:
        return unavailable(SESSIONS, exc)
    by_pid = {s.pid: s for s in sessions}
    roots = root_blockers(sessions)
    blocked = {s.pid for s in sessions if s.blocked_by}
    root_info = [_brief(by_pid[pid], waiters=waiters) for pid, waiters in roots.items() if pid in by_pid]
    idle_xact = [_brief(s) for s in sessions if (s.state or "").startswith("idle in transaction")]
    runaway = [s for s in sessions if s.state == "active" and s.pid not in blocked
               and (s.seconds_in_query or 0) >= db.long_query_seconds]
    long_queries = [_brief(s, seconds=round(s.seconds_in_query or 0, 1)) for s in runaway]
    details = [f"root blocker pid {r.pid} ({r.role}, {r.state} {r.seconds:.0f} s) blocks "
               f"{', '.join(map(str, r.waiters))}: {r.query[:80]}" for r in root_info]
    details += [f"idle in transaction: pid {s.pid} ({s.role}) for {s.seconds:.0f} s" for s in idle_xact]
    details += [f"long query: pid {s.pid} ({s.role}) running {s.seconds:.0f} s: {s.query[:80]}"
                for s in long_queries]
    problems = []
    if root_info:
        problems.append(f"{len(blocked)} sessions blocked; root blockers: pid "
                        + ", ".join(str(r.pid) for r in root_info))
    stale = [s for s in idle_xact if s.seconds >= db.idle_in_transaction_seconds]
    if stale:
        problems.append(f"{len(stale)} idle in transaction over {db.idle_in_transaction_seconds:g} s")
    if long_queries:
        problems.append(f"{len(long_queries)} queries over {db.long_query_seconds:g} s")
    summary = "; ".join(problems) or f"{len(sessions)} sessions, no blocking, no long queries"
    return Finding(SESSIONS, not problems, summary, tuple(details),
                   SessionsFacts(root_blockers=root_info, idle_in_transaction=idle_xact, long_queries=long_queries,
                                 blocked=sorted(blocked)))


@step("check-database-connections")
def check_connections(ctx: RunContext) -> Finding:
    """Connections against max_connections (less the reserved slots) and each role's limit."""
    db = ctx.database_target()
    try:
        client = ctx.postgres()
        connections = client.connections()
        sessions = client.sessions()
    except _ERRORS as exc:
        return unavailable(CONNECTIONS, exc)
    scopes = [ConnectionScope(scope=scope, used=used, limit=limit) for scope, used, limit in connections.pressure()]
    pressured = [s for s in scopes if s.limit > 0 and s.used >= db.connection_threshold * s.limit]
    details = tuple(f"{s.scope}: {s.used}/{s.limit}" for s in scopes)
    idle = []
    if pressured:
        roles = {s.scope.removeprefix("role ") for s in pressured if s.scope.startswith("role ")}
        idle = [_brief(s) for s in sessions if s.state == "idle" and s.seconds_in_state >= db.idle_seconds
                and (not roles or s.role in roles)]
    usable = connections.usable
    summary = (f"{connections.used}/{usable} usable connections ({connections.reserved} reserved)"
               + ("; pressure: " + ", ".join(f"{s.scope} {s.used}/{s.limit}" for s in pressured)
                  if pressured else ""))
    return Finding(CONNECTIONS, not pressured, summary, details,
                   ConnectionsFacts(scopes=scopes, pressured=pressured, idle_sessions=idle))


@step("check-replication")
def check_replication(ctx: RunContext, max_lag_seconds: float = 30.0) -> Finding:
    """pg_stat_replication on a primary, pg_last_xact_replay_timestamp on a replica."""
    try:
        repl = ctx.postgres().replication()
    except _ERRORS as exc:
        return unavailable(REPLICATION, exc)
    if repl.role == "replica":
        lag = repl.replay_lag_seconds
        ok = lag is not None and lag <= max_lag_seconds
        return Finding(REPLICATION, ok, f"replica, replay lag {lag if lag is not None else 'unknown'} s",
                       data=ReplicationFacts(role="replica", lag=lag))
    lagging = [r for r in repl.replicas if (r.replay_lag_seconds or 0) > max_lag_seconds]
    details = tuple(r.describe() for r in repl.replicas)
    summary = f"primary with {len(repl.replicas)} replicas" + (f", {len(lagging)} lagging" if lagging else "")
    return Finding(REPLICATION, not lagging, summary, details,
                   ReplicationFacts(role="primary", replicas=len(repl.replicas)))


# Redis counts evictions since it started: a cache evicting now is one whose count grows over this.
EVICTION_SAMPLE_SECONDS = 0.5


@step("check-cache")
def check_cache(ctx: RunContext) -> Finding:
    """Redis memory, clients, and evictions happening now (not the count since it started: an LRU
    cache that evicted last week is not under pressure today)."""
    cache = ctx.cache_target()
    started = time.monotonic()
    try:
        with ctx.cache(cache.url_secret) as client:
            first = client.health()
            keys = client.count_prefix(cache.prefix)
            time.sleep(max(0.0, EVICTION_SAMPLE_SECONDS - (time.monotonic() - started)))
            health = client.health()
    except _ERRORS as exc:
        return unavailable(CACHE, exc)
    ratio = health.memory_ratio
    evicting = max(health.evicted_keys - first.evicted_keys, 0)
    pressured = (ratio is not None and ratio >= cache.memory_threshold) or evicting > 0
    memory = f"memory {health.used_memory // 1024} KiB" + (f" ({ratio:.0%} of max)" if ratio is not None else "")
    summary = (f"{memory}, {health.connected_clients} clients, {evicting} evictions in the last "
               f"{EVICTION_SAMPLE_SECONDS:g} s ({health.evicted_keys} since Redis started), "
               f"{keys} keys {cache.prefix}*")
    return Finding(CACHE, not pressured, summary, data=CacheFacts(key_count=keys, evicted=health.evicted_keys))


def _signal(ctx: RunContext, action: PlannedAction, grant: Grant, how: str) -> ActionResult:
    require_grant(grant, action)
    p = action.params_as(Sessions)
    outcomes = ctx.postgres().signal(p.sessions, how, allow_superuser=p.allow_superuser)
    run_logger().info("%s: %s", how, outcomes)
    done = [pid for pid, outcome in outcomes.items() if outcome == f"{how}d"]
    detail = ", ".join(f"pid {pid} {outcome}" for pid, outcome in outcomes.items())
    return ActionResult(action.describe(), bool(done), detail)


@step("terminate-sessions")
def terminate_sessions(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """pg_terminate_backend for exactly the planned backends (cancelling alone leaves locks held)."""
    return _signal(ctx, action, grant, "terminate")


@step("cancel-queries")
def cancel_queries(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """pg_cancel_backend for exactly the planned backends."""
    return _signal(ctx, action, grant, "cancel")


@step("clear-cache")
def clear_cache(ctx: RunContext, action: PlannedAction, grant: Grant) -> ActionResult:
    """Delete the planned key prefix (SCAN + UNLINK), or FLUSHDB when the plan says so."""
    require_grant(grant, action)
    cache, p = ctx.cache_target(), action.params_as(ClearCache)
    with ctx.cache(cache.url_secret) as client:
        if p.mode == "flushdb":
            client.flushdb()
            return ActionResult(action.describe(), True, f"FLUSHDB on {client.where}")
        removed = client.delete_prefix(p.prefix)
    return ActionResult(action.describe(), removed > 0, f"{removed} keys {p.prefix}* removed")


@step("verify-database")
def verify_database(ctx: RunContext, findings: dict[str, Finding], plan: Plan) -> Verification:
    """Poll until the planned waiters are no longer blocked, no root blocker is left,
    connections are under the threshold and the service's health check passes."""
    timeouts, db = ctx.config.timeouts, ctx.database_target()
    waiters = {pid for a in plan.actions if isinstance(a.params, Sessions) for pid in a.params.waiters}
    start, last = time.monotonic(), "not checked"
    while True:
        problems = []
        try:
            client = ctx.postgres()
            sessions = client.sessions()
            still = sorted(waiters & {s.pid for s in sessions if s.blocked_by})
            if still:
                problems.append(f"still blocked: {still}")
            if root_blockers(sessions):
                problems.append(f"blocking chains remain (roots {sorted(root_blockers(sessions))})")
            for scope, used, limit in client.connections().pressure():
                if limit > 0 and used >= db.connection_threshold * limit:
                    problems.append(f"{scope} at {used}/{limit} connections")
        except _ERRORS as exc:
            problems.append(str(exc))
        health = probe_all([ctx.service.url(ctx.service.health_path)], timeouts.probe_seconds)[0]
        if not health.ok:
            problems.append(health.describe())
        elapsed = time.monotonic() - start
        last = "; ".join(problems) or "no blocking, connections under the threshold, health passes"
        if not problems:
            return Verification(True, elapsed, last)
        if elapsed + timeouts.verify_poll_seconds > timeouts.verify_seconds:
            return Verification(False, elapsed, last)
        time.sleep(timeouts.verify_poll_seconds)
