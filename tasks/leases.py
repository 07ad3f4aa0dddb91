"""One runbook acts on a target at a time: the service's lease in the incident store, held by
the run that works it (while it diagnoses, waits for approval, acts and verifies), and how a
second run waits its turn or learns who holds it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run

from incidents.alerts import target_of
from incidents.models import Incident, Lease
from incidents.store import StoreError
from tasks.context import RunContext
from tasks.steps import run_logger

TURN_POLL_SECONDS = 1.0
T = TypeVar("T")


def run_gone(flow_run_id: str, client: SyncPrefectClient | None = None) -> bool:
    """A lease holder whose run ended (or vanished) without releasing it, e.g. it crashed."""
    if client is None:
        with get_client(sync_client=True) as client:
            return run_gone(flow_run_id, client)
    try:
        state = client.read_flow_run(UUID(flow_run_id)).state
    except ObjectNotFound:
        return True
    return state is None or state.is_final()


def _owner(incident: Incident, gone: Callable[[str], bool]) -> Lease | None:
    """A joined incident is worked by its own run (the one its first alert started) while that
    run lives: a second scenario never races it for the service, whichever diagnoses faster."""
    if not incident.flow_run_id or gone(incident.flow_run_id):
        return None
    return Lease(incident.flow_run_id, incident.id, incident.scenario)


def holder_of(ctx: RunContext, incident: Incident, scenario: str,
              gone: Callable[[str], bool] = run_gone) -> Lease | None:
    """None when this run may work the service now (it holds the lease); else who does."""
    return (_owner(incident, gone) if incident.joined else None) or take_lease(ctx, incident, scenario, gone)


def await_turn(ctx: RunContext, incident: Incident, scenario: str, holder: Lease) -> Lease | None:
    """Another runbook works the service. While it is still diagnosing (its incident has no
    plan waiting for approval yet), wait: if it ends without a plan (say high-error-rate found
    nothing to scale while the deploy is bad), this run takes over and plans. Once a plan is
    asked for, or this run's incident is resolved, return the holder: this run adds its findings."""
    deadline = time.monotonic() + ctx.config.timeouts.verify_seconds
    store = ctx.store()
    # One Prefect client for the whole wait: many runs waiting at once (a storm of alerts for
    # one service) would otherwise each build a client, TLS context included, every poll.
    with get_client(sync_client=True) as client:
        def gone(run_id: str) -> bool:
            return run_gone(run_id, client)

        while time.monotonic() < deadline:
            if store.approvals(holder.incident_id) or store.get(incident.id).resolved_at is not None:
                return holder
            time.sleep(TURN_POLL_SECONDS)
            next_holder = holder_of(ctx, incident, scenario, gone)
            if next_holder is None:
                run_logger().info("Run %s ended without a plan: this run works incident %s now",
                                      incident.flow_run_id, incident.id)
                return None
            holder = next_holder
    return holder


def take_lease(ctx: RunContext, incident: Incident, scenario: str,
               gone: Callable[[str], bool] = run_gone) -> Lease | None:
    """None when this run now holds the service; else the lease of the run that does."""
    run_id = flow_run.get_id()
    if not run_id:
        return None  # not a flow run (a test calling the function): nothing to share with
    lease = ctx.store().take_lease(target_of(ctx.environment, ctx.service_name), str(run_id), incident.id,
                                   scenario, gone)
    return None if lease.flow_run_id == str(run_id) else lease


def holding(ctx: RunContext, incident: Incident, scenario: str, work: Callable[[], T], taken: bool = False) -> T:
    """Run `work` holding the service's lease, and give it back when the run ends here. A run
    that suspends for its approval keeps it (suspension leaves by a BaseException); a run
    that is cancelled gives it back in its on_cancellation hook; one that crashed loses it to
    the next run that finds its holder gone."""
    if not taken:
        take_lease(ctx, incident, scenario)  # a resumed run holds it still, or takes it back
    try:
        result = work()
    except Exception:
        release_lease(ctx)
        raise
    release_lease(ctx)
    return result


def release_lease(ctx: RunContext) -> None:
    run_id = flow_run.get_id()
    if run_id:
        try:
            ctx.store().release_lease(target_of(ctx.environment, ctx.service_name), str(run_id))
        except StoreError as exc:
            run_logger().warning("lease on %s not released: %s", ctx.service_name, exc)
