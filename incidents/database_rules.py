"""Playbook Scenario 3 (database issues): its planning rule, over the facts of its checks."""

from __future__ import annotations

from typing import Literal

from incidents.action_params import ClearCache, RolloutRestart, Sessions, SessionState
from incidents.check_facts import (
    CACHE,
    CONNECTIONS,
    HEALTH,
    REACH,
    REPLICATION,
    SESSIONS,
    CacheFacts,
    ConnectionsFacts,
    SessionBrief,
    SessionsFacts,
)
from incidents.config import DatabaseTarget, ServiceConfig
from incidents.evidence import Weighing, abstain, settle
from incidents.findings import Finding
from incidents.plans import Plan, PlannedAction
from incidents.vocabulary import ActionKind, Confidence


def _sessions(items: list[SessionBrief]) -> list[tuple[int, str]]:
    return [(s.pid, s.backend_start) for s in items]


def _expect(items: list[SessionBrief], clock: Literal["state", "query"] = "state") -> dict[str, SessionState]:
    """What each session looked like when planned: its state and how long it had been in it
    (`clock` state) or in its query (`clock` query). Re-checked before acting."""
    return {str(s.pid): SessionState(state=s.state, seconds=s.seconds, clock=clock) for s in items}


def plan_database_issues(incident_id: int, environment: str, service_name: str, service: ServiceConfig,
                         findings: dict[str, Finding]) -> Plan:
    """Terminate root blockers and stale idle-in-transaction sessions, cancel runaway queries,
    end idle sessions under connection pressure, clear the cache under memory pressure, and
    restart the database only when it does not answer at all."""
    db = service.database
    evidence = tuple(f"{f.check}: {f.summary}" for f in findings.values())
    if db is None:
        return Plan(incident_id, service_name, environment, (), evidence, "The service has no database configured.")
    actions: list[PlannedAction] = []
    notes: list[str] = []
    _restart(db, service, findings.get(REACH), actions, notes)
    sessions = findings.get(SESSIONS)
    _session_remedies(db, sessions.facts(SessionsFacts) if sessions else SessionsFacts(), actions, notes)
    _connection_remedy(findings.get(CONNECTIONS), actions, notes)
    _cache_remedy(service_name, service, findings.get(CACHE), actions)
    head = Plan(incident_id, service_name, environment, (), evidence + tuple(notes))
    w = Weighing([f"{f.check}: {f.summary}" for key, f in findings.items()
                  if f.ok is False and key in (REACH, CONNECTIONS, SESSIONS, REPLICATION, CACHE)], list(notes))
    if not actions:
        return _no_remedy(head, w, notes, findings.get(HEALTH))
    summary = "; ".join(a.describe() for a in actions)
    return settle(head, actions, Confidence.STRONG, w,
                  f"{len(actions)} remed{'y' if len(actions) == 1 else 'ies'}: {summary}")


def _restart(db: DatabaseTarget, service: ServiceConfig, reach: Finding | None, actions: list[PlannedAction],
             notes: list[str]) -> None:
    """A database that does not answer at all: restart its pods, when a deployment is named."""
    if reach is None or reach.ok is not False:
        return
    if not db.deployment:
        notes.append("the database does not answer and no deployment is configured to restart")
        return
    ns = service.kubernetes.namespace
    actions.append(PlannedAction(ActionKind.ROLLOUT_RESTART, f"deployment/{db.deployment} (namespace {ns})",
                                 "database not answering", "database pods replaced", "kubectl rollout restart",
                                 RolloutRestart(namespace=ns, deployment=db.deployment)))


def _session_remedies(db: DatabaseTarget, seen: SessionsFacts, actions: list[PlannedAction],
                      notes: list[str]) -> None:
    """Root blockers, stale idle-in-transaction sessions and runaway queries."""
    for root in seen.root_blockers:
        if root.superuser and not db.terminate_superusers:
            notes.append(f"root blocker pid {root.pid} is a superuser session: not terminated "
                         "(set terminate_superusers to allow it)")
            continue
        actions.append(PlannedAction(
            ActionKind.TERMINATE_SESSIONS, f"backend {root.pid} ({root.role})",
            f"{root.state} for {root.seconds:.0f} s, blocking {len(root.waiters)} sessions "
            f"(pids {', '.join(map(str, root.waiters))})",
            "terminated: its locks are released and the waiters proceed", "pg_terminate_backend",
            Sessions(sessions=_sessions([root]), allow_superuser=root.superuser, waiters=root.waiters,
                     expect=_expect([root]))))
    roots = {r.pid for r in seen.root_blockers}
    stale = [s for s in seen.idle_in_transaction if s.pid not in roots
             and s.seconds >= db.idle_in_transaction_seconds and (db.terminate_superusers or not s.superuser)]
    if stale:
        actions.append(PlannedAction(
            ActionKind.TERMINATE_SESSIONS, f"{len(stale)} idle-in-transaction sessions",
            "idle in transaction: " + ", ".join(f"pid {s.pid} ({s.seconds:.0f} s)" for s in stale),
            "terminated: their snapshots and locks are released", "pg_terminate_backend",
            Sessions(sessions=_sessions(stale), allow_superuser=False, waiters=[], expect=_expect(stale))))
    runaway = [q for q in seen.long_queries if (db.terminate_superusers or not q.superuser)]
    if runaway:
        actions.append(PlannedAction(
            ActionKind.CANCEL_QUERIES, f"{len(runaway)} long-running queries",
            "running: " + ", ".join(f"pid {q.pid} ({q.seconds:.0f} s)" for q in runaway),
            "query cancelled, session kept", "pg_cancel_backend",
            Sessions(sessions=_sessions(runaway), allow_superuser=False, expect=_expect(runaway, "query"))))


def _connection_remedy(connections: Finding | None, actions: list[PlannedAction], notes: list[str]) -> None:
    """Connection pressure: end the idle sessions old enough to end."""
    if not connections or connections.ok is not False:
        return
    seen = connections.facts(ConnectionsFacts)
    idle = [s for s in seen.idle_sessions if not s.superuser]
    scope = seen.pressured[0]
    if not idle:
        notes.append(f"connection pressure ({scope.scope}) with no idle session old enough to end")
        return
    actions.append(PlannedAction(
        ActionKind.TERMINATE_SESSIONS, f"{len(idle)} idle sessions ({scope.scope})",
        f"{scope.scope}: {scope.used}/{scope.limit} connections",
        f"{scope.scope}: about {scope.used - len(idle)}/{scope.limit} connections",
        "pg_terminate_backend", Sessions(sessions=_sessions(idle), allow_superuser=False, waiters=[],
                                         expect=_expect(idle))))


def _cache_remedy(service_name: str, service: ServiceConfig, cache: Finding | None,
                  actions: list[PlannedAction]) -> None:
    """Memory pressure in the service's cache: clear it the way the config says."""
    if not cache or cache.ok is not False or not service.cache:
        return
    how = "FLUSHDB" if service.cache.clear == "flushdb" else f"SCAN + UNLINK of keys {service.cache.prefix}*"
    actions.append(PlannedAction(
        ActionKind.CLEAR_CACHE, f"redis cache of {service_name}", cache.summary,
        "flushed" if service.cache.clear == "flushdb" else f"keys {service.cache.prefix}* removed", how,
        ClearCache(mode=service.cache.clear, prefix=service.cache.prefix,
                   planned_keys=cache.facts(CacheFacts).key_count)))


def _no_remedy(head: Plan, w: Weighing, notes: list[str], health: Finding | None) -> Plan:
    summary = "No database remedy applies" + (f" ({'; '.join(notes)})" if notes else "") + "."
    if health is not None and health.ok is False:
        return abstain(head, w, summary + " The service's database check still fails.")
    if w.support:  # a check fails that no remedy here treats
        return settle(head, [], Confidence.NONE, w, summary)
    w.add(True, "every database check passes")
    return settle(head, [], Confidence.STRONG, w, summary)


