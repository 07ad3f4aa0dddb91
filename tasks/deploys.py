"""Destructive remedies on deployments, and the verification that follows them.

Every remedy takes the PlannedAction and the Grant the approval gate issued, and refuses to
run without a grant for exactly that action. Before acting it re-reads the target: if the
deployment is no longer in the state the plan was approved for, it does nothing and says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from incidents.action_params import Rollback, RollbackByUndo, RollbackByWorkflow, RolloutRestart
from incidents.errors import RunbookError
from incidents.plans import Grant, PlannedAction, require_grant
from incidents.vocabulary import ActionKind
from integrations.kubernetes import RESTARTED_AT
from integrations.probes import probe_all
from tasks.context import RunContext
from tasks.steps import run_logger, step


class RemediationFailed(RunbookError):
    """The remedy was attempted and did not work; the message says what happened."""


@dataclass(frozen=True)
class ActionResult:
    action: str
    changed: bool
    detail: str


def _check_kind(action: PlannedAction, kind: str) -> None:
    if action.kind != kind:
        raise ValueError(f"expected a {kind} action, got {action.kind}")


@step("rollback-deployment")
def rollback_deployment(ctx: RunContext, action: PlannedAction, grant: Grant,
                        interrupted_at: datetime | None = None) -> ActionResult:
    """Roll the deployment back to the planned revision, through the service's strategy.
    `interrupted_at`: an earlier attempt of this very action began then and never finished;
    a workflow it dispatched is followed instead of dispatching a second one."""
    require_grant(grant, action)
    _check_kind(action, ActionKind.ROLLBACK)
    p = action.params_as(Rollback)
    with ctx.kubernetes() as kube:
        current = kube.deployment(p.namespace, p.deployment)
        revision = current.revision
        if revision != p.from_revision:
            image = current.image
            if image == p.to_image:
                return ActionResult(
                    action.describe(), False, f"already at {image} (revision {revision}): nothing to do"
                )
            raise RemediationFailed(f"deployment is at revision {revision}, not {p.from_revision} as planned: "
                                    "it changed since the plan was approved, so the rollback was not run")
        if isinstance(p, RollbackByUndo):
            result = kube.rollout_undo(p.namespace, p.deployment, to_revision=p.to_revision)
            detail = (f"kubectl rollout undo: revision {result.from_revision} -> {result.to_revision} ({result.image})"
                      if not result.skipped else f"skipped: already at revision {result.to_revision}")
            return ActionResult(action.describe(), not result.skipped, detail)
    # the same id for every attempt at this action of this plan: a retry finds its own run, never another's
    dispatch_id = f"{grant.plan_digest[:12]}-{action.digest[:8]}"
    return _rollback_by_workflow(ctx, action, action.params_as(RollbackByWorkflow), interrupted_at, dispatch_id)


def _rollback_by_workflow(ctx: RunContext, action: PlannedAction, p: RollbackByWorkflow,
                          interrupted_at: datetime | None, dispatch_id: str) -> ActionResult:
    logger = run_logger()
    with ctx.github() as github:
        earlier = github.find_dispatched_run(p.repo, p.workflow, dispatch_id, interrupted_at - timedelta(seconds=5)) \
            if interrupted_at else None
        if earlier is not None:
            run_id = int(earlier.id)
            logger.warning("An interrupted attempt already dispatched %s (run %s); following it instead of "
                           "dispatching again", p.workflow, run_id)
        else:
            logger.info("Dispatching %s in %s (environment=%s, to %s)", p.workflow, p.repo, p.environment, p.to_image)
            # the target is named: a second dispatch (an answer lost in transit) rolls to it again, harmlessly
            # without a known image the workflow undoes to the previous revision, as kubectl does
            inputs = {"environment": p.environment, "to_revision": str(p.to_revision)}
            run_id = github.dispatch_workflow(p.repo, p.workflow, p.ref,
                                              {**inputs, "to_image": p.to_image} if p.to_image else inputs,
                                              dispatch_id)
        run = github.wait_for_run(p.repo, p.workflow, run_id, timeout=ctx.config.timeouts.workflow_seconds, poll=1.0)
        if run.conclusion != "success":
            logs = github.failed_job_logs(p.repo, run.id, tail_lines=15)
            excerpt = " | ".join(line for text in logs.values() for line in text.splitlines()[-3:])
            raise RemediationFailed(f"rollback workflow run {run.id} ended {run.conclusion}: {excerpt}")
    return ActionResult(action.describe(), True, f"workflow run {run.id} ({run.html_url}) succeeded")


@step("restart-deployment")
def restart_deployment(ctx: RunContext, action: PlannedAction, grant: Grant,
                       interrupted_at: datetime | None = None) -> ActionResult:
    """kubectl rollout restart of the planned deployment (once: an interrupted attempt that
    already restarted it is recognised by the restartedAt annotation)."""
    require_grant(grant, action)
    _check_kind(action, ActionKind.ROLLOUT_RESTART)
    p = action.params_as(RolloutRestart)
    with ctx.kubernetes() as kube:
        if interrupted_at:
            done = kube.deployment(p.namespace, p.deployment).template_annotations.get(RESTARTED_AT)
            if done and datetime.fromisoformat(done.replace("Z", "+00:00")) >= interrupted_at - timedelta(seconds=5):
                return ActionResult(action.describe(), False, f"already restarted at {done} by the interrupted attempt")
        stamp = kube.rollout_restart(p.namespace, p.deployment)
    return ActionResult(action.describe(), True, f"restartedAt={stamp}")


@dataclass(frozen=True)
class Verification:
    recovered: bool
    seconds: float
    detail: str


@step("verify-recovery")
def verify_health(ctx: RunContext, consecutive: int = 2) -> Verification:
    """Poll the health endpoints until they pass `consecutive` times in a row, or the deadline."""
    logger = run_logger()
    timeouts = ctx.config.timeouts
    start = time.monotonic()
    streak, last = 0, "not checked"
    while True:
        results = probe_all(ctx.service.endpoints, timeouts.probe_seconds)
        failing = [r for r in results if not r.ok]
        streak = 0 if failing else streak + 1
        last = "; ".join(r.describe() for r in failing) or f"all {len(results)} endpoints answer"
        elapsed = time.monotonic() - start
        logger.info("verify: %s (%d/%d passes, %.0f s of %.0f s)", last, streak, consecutive, elapsed,
                    timeouts.verify_seconds)
        if streak >= consecutive:
            return Verification(True, elapsed, last)
        if elapsed + timeouts.verify_poll_seconds > timeouts.verify_seconds:
            return Verification(False, elapsed, last)
        time.sleep(timeouts.verify_poll_seconds)
