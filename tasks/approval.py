"""The approval gate. It pauses the flow run with a typed form (`approve`, `approver`,
`reason`) under the full plan, announces the pending approval in Slack with a link to the
run, and turns the answer into a Decision. Only an approval yields a Grant, for exactly
that plan; unanswered by the deadline counts as declined.

Called from a flow (a pause belongs to the flow run), not as a task.
"""

from __future__ import annotations

import contextvars
import threading
import time
from dataclasses import dataclass

from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import flow_run
from pydantic import Field

from incidents.models import Incident
from incidents.plans import Grant, Plan
from incidents.store import StoreError
from tasks.context import RunContext
from tasks.notify import notify_slack
from tasks.timeline import record

TIMEOUT_REASON = "no answer before the approval deadline"
DEADLINE_APPROVER = "runbooks (approval deadline)"


class ApprovalInput(RunInput):
    """The Resume form. Tools outside the project resume runs with these field names.

    The rules live in the JSON schema because that is what the Prefect server checks when a
    run is resumed: a submission without a name is rejected there with a reason, and the
    run keeps waiting.
    """

    approve: bool = Field(False, description="On: run exactly this plan. Off: decline it; nothing changes.")
    approver: str = Field("", min_length=1, max_length=200, pattern=r"\S",
                          description="Your name: who approved or declined (required).")
    reason: str = Field("", max_length=2000, description="Why (written to the incident timeline).")


@dataclass(frozen=True)
class Decision:
    outcome: str  # approved | declined | timed_out
    approver: str | None
    reason: str
    automatic: bool = False
    grant: Grant | None = None

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"


class DrillNotAllowed(PermissionError):
    pass


def request_approval(ctx: RunContext, incident: Incident, plan: Plan, *, auto_approve_for_drill: str | None = None,
                     auto_approve_delay: float = 0.0) -> Decision:
    """Ask for approval of `plan` and wait for the answer (or the deadline)."""
    logger = get_run_logger()
    if auto_approve_for_drill and not ctx.config.drills_allowed:
        raise DrillNotAllowed(f"environment {ctx.environment!r} does not allow drills (drills_allowed is false)")
    store = ctx.store()
    run_id = flow_run.get_id()
    try:
        approval_id = store.request_approval(incident.id, plan.digest, plan.to_dict(), run_id)
    except StoreError as exc:
        logger.error("Approval request not recorded: %s", exc)
        approval_id = None
    record(ctx, incident.id, "runbook", "approval_requested",
           "Approval requested: " + "; ".join(a.describe() for a in plan.actions), {"plan_digest": plan.digest})

    if auto_approve_for_drill:
        time.sleep(auto_approve_delay)  # a drill may practise a human's reaction time
        decision = Decision("approved", f"drill {auto_approve_for_drill}", "automatic approval for a drill",
                            automatic=True, grant=Grant.issue(plan, f"drill {auto_approve_for_drill}",
                                                              "automatic approval for a drill", automatic=True))
        return _finish(ctx, incident, plan, approval_id, decision)

    timeout = ctx.config.approval.timeout_seconds
    link = ctx.run_url(run_id)
    notify_slack(ctx, incident.id,
                 f"⏸️ APPROVAL NEEDED\nIssue: {incident.issue_ref}\nService: {ctx.service_name} ({ctx.environment})\n"
                 + "\n".join(f"Plan: {a.describe()}" for a in plan.actions)
                 + f"\nDeadline: {timeout // 60} min (then declined)\nReview and approve: {link}",
                 link=("Review the plan", link) if link else None)

    answer, timed_out = _wait_for_answer(plan, timeout, ctx.config.approval.poll_seconds)
    if timed_out:
        decision = Decision("timed_out", None, TIMEOUT_REASON)
    elif answer.approve:
        decision = Decision("approved", answer.approver.strip(), answer.reason.strip(),
                            grant=Grant.issue(plan, answer.approver.strip(), answer.reason.strip()))
    else:
        decision = Decision("declined", answer.approver.strip() or None, answer.reason.strip() or "declined")
    return _finish(ctx, incident, plan, approval_id, decision)


def _wait_for_answer(plan: Plan, timeout: int, poll: float) -> tuple[ApprovalInput | None, bool]:
    """Pause for the form. At the deadline the run resumes itself with a decline, so the run
    goes on to report it (a pause that simply expired would leave the run Failed)."""
    run_id = flow_run.get_id()
    expired = threading.Event()

    def decline_at_deadline() -> None:
        with get_client(sync_client=True) as client:
            result = client.resume_flow_run(run_id, run_input={"approve": False, "approver": DEADLINE_APPROVER,
                                                               "reason": TIMEOUT_REASON})
        if result.status.value == "ACCEPT":
            expired.set()

    # The timer thread runs in a copy of this context: Prefect's settings (which server) live there.
    timer = threading.Timer(timeout, contextvars.copy_context().run, args=(decline_at_deadline,))
    timer.daemon = True
    form = ApprovalInput.with_initial_data(description=plan.markdown(timeout), approve=False)
    timer.start()
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=timeout + 60, poll_interval=poll,
                                key=f"approval-{plan.digest[:12]}")
    except FlowPauseTimeout:
        return None, True
    finally:
        timer.cancel()
    return answer, expired.is_set()


def _finish(ctx: RunContext, incident: Incident, plan: Plan, approval_id: int | None, decision: Decision) -> Decision:
    logger = get_run_logger()
    if approval_id is not None:
        try:
            ctx.store().decide_approval(approval_id, decision.outcome, decision.approver, decision.reason,
                                        decision.automatic)
        except StoreError as exc:
            logger.error("Approval decision not recorded: %s", exc)
    who = decision.approver or "nobody"
    if decision.approved:
        message = f"Plan approved by {who}" + (" (automatic, drill)" if decision.automatic else "") + \
                  f": {decision.reason or 'no reason given'}"
    elif decision.outcome == "timed_out":
        message = "Approval timed out: nothing was changed"
    else:
        message = f"Plan declined by {who}: {decision.reason}. Nothing was changed"
    logger.info(message)
    record(ctx, incident.id, decision.approver or "runbook", f"approval_{decision.outcome}", message,
           {"plan_digest": plan.digest, "automatic": decision.automatic})
    return decision
