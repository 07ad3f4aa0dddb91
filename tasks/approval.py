"""The approval gate. It pauses the flow run with a typed form (`approve`, `approver`,
`reason`) under the full plan, announces the pending approval in Slack with a link to the
run, and turns the answer into a Decision. Only an approval yields a Grant, for exactly
that plan; unanswered by the deadline counts as declined.

Called from a flow (a pause belongs to the flow run), not as a task.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run
from pydantic import Field

from incidents.errors import RunbookError
from incidents.findings import Finding
from incidents.models import SIGNERS_SEPARATOR, Approval, EventKind, Incident, pause_key
from incidents.plans import Grant, Plan
from incidents.redaction import redact
from incidents.store import StoreError
from incidents.store_protocol import Records
from incidents.templates import approval_buttons, slack_text
from incidents.timeline_payloads import ApprovalStep, UnverifiedAnswer
from tasks.cancellation import cancelling_now, raise_if_cancelling
from tasks.context import RunContext
from tasks.forms import prefilled
from tasks.notify import notify_slack
from tasks.paging import update_pagers
from tasks.steps import run_logger
from tasks.timeline import record

TIMEOUT_REASON = "no answer before the approval deadline"
DEADLINE_APPROVER = "runbooks: approval deadline"  # no parentheses: the form refuses them in names
_DECISION_KIND = {"approved": EventKind.APPROVAL_APPROVED, "declined": EventKind.APPROVAL_DECLINED,
                  "timed_out": EventKind.APPROVAL_TIMED_OUT, "withdrawn": EventKind.APPROVAL_WITHDRAWN}


class ApprovalInput(RunInput):
    """The Resume form. Tools outside the project resume runs with these field names.

    The rules live in the JSON schema because that is what the Prefect server checks when a
    run is resumed: a submission without a name is rejected there with a reason, and the
    run keeps waiting.
    """

    approve: bool = Field(False, description="On: run exactly this plan. Off: decline it; nothing changes.")
    # A typed name cannot pose as a verified or a joint decision: no "+" and no parentheses
    # (the gate adds "(verified)" or "(unverified)" itself; the approval page sends "sam, tess").
    approver: str = Field(min_length=1, max_length=200, pattern=r"^[^+()]*[^+()\s][^+()]*$",
                          description="Your name: who approved or declined (required; no + or parentheses).")
    reason: str = Field("", max_length=2000, description="Why (written to the incident timeline).")


@dataclass(frozen=True)
class Decision:
    outcome: str  # approved | declined | timed_out | withdrawn
    approver: str | None
    reason: str
    automatic: bool = False
    grant: Grant | None = None

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"


class DrillNotAllowed(RunbookError, PermissionError):
    pass


# How the gate gets an answer: (plan, seconds left, poll interval, attempt, note for the form)
# -> (the form as submitted or None, whether the deadline passed). `wait_for_answer` pauses the run.
Ask = Callable[[Plan, int, float, int, str], "tuple[ApprovalInput | None, bool]"]


def request_approval(ctx: RunContext, incident: Incident, plan: Plan, *, auto_approve_for_drill: str | None = None,
                     auto_approve_delay: float = 0.0, findings: Mapping[str, Finding] | None = None,
                     ask: Ask | None = None) -> Decision:
    """Ask for approval of `plan` and wait for the answer (or the deadline).

    A run started from a deployment suspends while it waits: its process exits, so a worker
    crash or restart cannot lose the approval; answering reschedules the run, which comes back
    here (`approval_for_run`) and gets the answer without asking again. A run started in-process
    (tests, `python -m flows...`) pauses instead. `ask` replaces the pause (the unit tier answers
    with it); everything else - the record, the verification, the decision - is the same."""
    if auto_approve_for_drill and not ctx.config.drills_allowed:
        raise DrillNotAllowed(f"environment {ctx.environment!r} does not allow drills (drills_allowed is false)")
    store = ctx.store()
    run_id = flow_run.get_id()
    earlier = _earlier_request(store, run_id, plan)
    approval_id = _recorded_request(ctx, incident, plan, earlier, run_id, findings)
    if auto_approve_for_drill:
        time.sleep(auto_approve_delay)  # a drill may practise a human's reaction time
        decision = Decision("approved", f"drill {auto_approve_for_drill}", "automatic approval for a drill",
                            automatic=True, grant=Grant.issue(plan, f"drill {auto_approve_for_drill}",
                                                              "automatic approval for a drill", automatic=True))
        return _finish(ctx, incident, plan, approval_id, decision)

    settings = ctx.config.approval
    needed = settings.needed(incident.severity)
    token = _token(store, approval_id, earlier)
    page = f"{settings.page_url.rstrip('/')}/approvals/{token}" if settings.approvers and token else None
    if earlier is None:
        _announce(ctx, incident, plan, run_id, needed, page, token)
    decision = _await_decision(ctx, incident, plan, approval_id, earlier, needed, page, ask or wait_for_answer)
    withdrawn = _withdrawal(ctx, approval_id)
    if withdrawn is not None:
        return _finish(ctx, incident, plan, None, withdrawn)  # the intake recorded it; only the timeline is left
    if earlier is not None and earlier.decision is not None:
        return decision  # decided and recorded before the run was interrupted: do not record it twice
    return _finish(ctx, incident, plan, approval_id, decision)


def _recorded_request(ctx: RunContext, incident: Incident, plan: Plan, earlier: Approval | None, run_id: str | None,
                      findings: Mapping[str, Finding] | None) -> int | None:
    """The approval request's id: the one this run recorded before it was suspended, or a new
    one (None when the store cannot record it; the gate still waits for an answer)."""
    logger = run_logger()
    if earlier is not None:
        logger.info("Resumed: continuing with approval request %s for this plan", earlier.id)
        return int(earlier.id)
    timeout = ctx.config.approval.timeout_seconds
    try:
        approval_id: int | None = ctx.store().request_approval(
            incident.id, plan, run_id,
            datetime.now(timezone.utc) + timedelta(seconds=timeout), findings)
    except StoreError as exc:
        logger.error("Approval request not recorded: %s", exc)
        approval_id = None
    record(ctx, incident.id, "runbook", EventKind.APPROVAL_REQUESTED,
           "Approval requested: " + "; ".join(a.describe() for a in plan.actions),
           ApprovalStep(plan_digest=plan.digest))
    return approval_id


def _announce(ctx: RunContext, incident: Incident, plan: Plan, run_id: str | None, needed: int, page: str | None,
              token: str | None) -> None:
    """The APPROVAL NEEDED message: the plan, how sure it is, the deadline and where to answer."""
    timeout = ctx.config.approval.timeout_seconds
    link = page if needed else ctx.run_url(run_id)
    how = (
        f"Approve with your own credential ({needed} different approver{'s' if needed > 1 else ''} needed): {page}"
        if needed
        else f"Review and approve: {ctx.run_url(run_id)}" + (f"\nVerified approval: {page}" if page else "")
    )
    notify_slack(
        ctx,
        incident.id,
        f"⏸️ APPROVAL NEEDED\nIssue: {incident.issue_ref}\nService: {ctx.service_name} ({ctx.environment})\n"
        + "\n".join(f"Plan: {a.describe()}" for a in plan.actions)
        + "\n"
        + "\n".join(plan.judgement_lines())
        + f"\nDeadline: {timeout // 60} min (then declined)\n{how}"
        + _approvers_line(ctx, incident),
        link=("Review the plan", link) if link else None,
        buttons=_buttons(ctx, incident, token),
    )


def _await_decision(ctx: RunContext, incident: Incident, plan: Plan, approval_id: int | None, earlier: Approval | None,
                    needed: int, page: str | None, ask: Ask) -> Decision:
    """Wait (suspended or paused) until an answer counts or the deadline passes. An approval
    without the verified identity the severity needs is recorded, announced and waited past."""
    settings = ctx.config.approval
    deadline = time.monotonic() + settings.timeout_seconds
    attempt = earlier.attempt if earlier is not None else 0
    while True:
        remaining = max(1, int(deadline - time.monotonic()))
        answer, timed_out = ask(plan, remaining, settings.poll_seconds, attempt, _form_note(needed, page))
        decision = _decide(ctx, plan, answer, timed_out, needed, approval_id)
        if decision is not None:
            return decision
        # _decide waits only on an approval it could verify: an answer, to a recorded request
        assert answer is not None and approval_id is not None
        signed = _approving_signers(ctx, approval_id)
        record(ctx, incident.id, "runbook", EventKind.APPROVAL_UNVERIFIED,
               f"An approval by {answer.approver.strip()!r} without verified identity was ignored: "
               f"{ctx.environment} needs {needed} verified approver(s) for {incident.severity.value} "
               f"({len(signed)} so far). The run keeps waiting.", UnverifiedAnswer(page=page))
        notify_slack(ctx, incident.id, f"⚠️ APPROVAL NOT COUNTED\nIssue: {incident.issue_ref}\n"
                                       f"A Resume by {slack_text(answer.approver.strip(), 100)} carried no "
                                       f"verified identity. "
                                       f"Approve here: {page}")
        attempt = ctx.store().next_attempt(approval_id)


def _token(store: Records, approval_id: int | None, earlier: Approval | None) -> str | None:
    """The approval's unguessable token, which links and buttons carry instead of its id."""
    if earlier is not None:
        return earlier.token
    if approval_id is None:
        return None
    try:
        row = store.approval(approval_id)
    except StoreError:
        return None
    return row.token if row else None


def _approvers_line(ctx: RunContext, incident: Incident) -> str:
    """The approvers of this severity who have Slack IDs, mentioned so that Slack notifies them."""
    members = [f"<@{a.slack_user}>" for a in ctx.config.approval.approvers
               if a.slack_user and incident.severity.value in a.severities]
    return f"\nApprovers: {' '.join(members)}" if members else ""


def _buttons(ctx: RunContext, incident: Incident, token: str | None) -> list[dict] | None:
    """Approve/Decline in Slack: with a Slack app, and approvers who have Slack member IDs."""
    if not token or not ctx.config.slack.app or not any(a.slack_user for a in ctx.config.approval.approvers):
        return None
    return approval_buttons(token, incident.severity.value)


def _withdrawal(ctx: RunContext, approval_id: int | None) -> Decision | None:
    """The approval was withdrawn (its alerts resolved and stayed resolved): only the intake or
    the incident watch records that, in the store. A person's decline is never a withdrawal."""
    if approval_id is None:
        return None
    try:
        row = ctx.store().approval(approval_id)
    except StoreError:
        return None
    if row is None or row.decision != "withdrawn":
        return None
    return Decision("withdrawn", row.approver, row.reason or "alert resolved", automatic=True)


def _form_note(needed: int, page: str | None) -> str:
    if not needed:
        return ""
    return (f"**This environment requires verified approvers** ({needed} different approver"
            f"{'s' if needed > 1 else ''}): approving here is not counted. Approve with your own credential on "
            f"{page}. Declining here is accepted.\n\n")


def _approving_signers(ctx: RunContext, approval_id: int | None) -> list[str]:
    if approval_id is None:
        return []
    return [s.approver for s in ctx.store().signatures(approval_id) if s.decision == "approve"]


def _decide(ctx: RunContext, plan: Plan, answer: ApprovalInput | None, timed_out: bool, needed: int,
            approval_id: int | None) -> Decision | None:
    """The decision an answer makes, or None when an approval lacks the verified approvers it needs."""
    if timed_out or answer is None:
        return Decision("timed_out", None, TIMEOUT_REASON)
    if not answer.approve:  # a decline changes nothing: it needs no verification, only a label
        return Decision("declined", _labelled(ctx, approval_id, answer.approver.strip(), "decline"),
                        answer.reason.strip() or "declined")
    if not needed:  # the Resume form suffices here; an answer from the approval page is still marked verified
        return _approved(plan, _labelled(ctx, approval_id, answer.approver.strip(), "approve"), answer)
    if approval_id is None:
        return Decision("declined", None, "approvers cannot be verified: the incident store is unavailable")
    signers = list(dict.fromkeys(_approving_signers(ctx, approval_id)))
    if len(signers) < needed:
        return None
    approver = " + ".join(signers) + " (verified)"
    ctx.store().mark_verified(approval_id)
    return _approved(plan, approver, answer)


def _labelled(ctx: RunContext, approval_id: int | None, typed: str, decision: str) -> str:
    """The name an answer was given under, marked "(verified)" when the approval page or Slack
    recorded exactly these approvers' signatures for this decision, else "(unverified)": a name
    typed in the Resume form is only what someone typed."""
    if approval_id is None:
        return f"{typed} (unverified)"
    try:
        signed = list(dict.fromkeys(s.approver for s in ctx.store().signatures(approval_id) if s.decision == decision))
        if signed and typed == SIGNERS_SEPARATOR.join(signed):
            if decision == "approve":
                ctx.store().mark_verified(approval_id)
            return f"{typed} (verified)"
    except StoreError as exc:  # the answer counts all the same; only the mark is missing
        run_logger().warning("Approval %s: signatures not readable: %s", approval_id, exc)
    return f"{typed} (unverified)"


def _approved(plan: Plan, approver: str, answer: ApprovalInput) -> Decision:
    reason = answer.reason.strip()
    return Decision("approved", approver, reason, grant=Grant.issue(plan, approver, reason))


def _earlier_request(store: Records, run_id: str | None, plan: Plan) -> Approval | None:
    if not run_id:
        return None
    try:
        earlier = store.approval_for_run(run_id)
    except StoreError:
        return None
    return earlier if earlier and earlier.plan_digest == plan.digest else None


def form_name(name: str) -> str:
    """A name as the Resume form accepts it (no + or parentheses), for answers the runbooks give."""
    return " ".join(re.sub(r"[+()]", " ", name).split()) or "unnamed"


def deadline_answer() -> ApprovalInput:
    """What the deadline submits: a decline the gate reads as a timeout."""
    return ApprovalInput(approve=False, approver=DEADLINE_APPROVER, reason=TIMEOUT_REASON)


def _is_deadline(answer: ApprovalInput) -> bool:
    return (not answer.approve) and answer.approver == DEADLINE_APPROVER and answer.reason == TIMEOUT_REASON


def wait_for_answer(plan: Plan, timeout: int, poll: float, attempt: int = 0,
                    note: str = "") -> tuple[ApprovalInput | None, bool]:
    """Suspend (deployed run) or pause (in-process run) for the form.

    The deadline is enforced by resuming the run with a decline (a pause that simply expired
    would leave the run Failed): for a paused run by a timer here, for a suspended run (whose
    process is gone) by the incident watch (`tasks/watch.py`), from the approval's deadline_at."""
    form = prefilled(ApprovalInput, redact(note + plan.markdown(timeout)))
    key = pause_key(plan.digest, attempt)
    raise_if_cancelling("the wait for approval")
    if deployment.get_id():
        try:  # the extra 10 minutes leave the watch (every minute) time to decline it at the deadline
            answer = suspend_flow_run(wait_for_input=form, timeout=timeout + 600, key=key)
        except RuntimeError:  # Prefect refuses to suspend a run cancelled since the check above
            if cancelling_now():
                raise_if_cancelling("the wait for approval")
            raise
        return answer, _is_deadline(answer)
    run_id = flow_run.get_id()

    def decline_at_deadline() -> None:
        with get_client(sync_client=True) as client:
            client.resume_flow_run(UUID(str(run_id)), run_input=deadline_answer().model_dump())

    # The timer thread runs in a copy of this context: Prefect's settings (which server) live there.
    timer = threading.Timer(timeout, contextvars.copy_context().run, args=(decline_at_deadline,))
    timer.daemon = True
    timer.start()
    try:
        # Prefect types the poll interval as int and sleeps it as given: a fraction of a second works
        answer = pause_flow_run(wait_for_input=form, timeout=timeout + 60, poll_interval=poll,  # type: ignore[call-overload]
                                key=key)
    except FlowPauseTimeout:
        return None, True
    except RuntimeError:  # Prefect refuses to pause a run cancelled since the check above
        if cancelling_now():
            raise_if_cancelling("the wait for approval")
        raise
    finally:
        timer.cancel()
    return answer, _is_deadline(answer)


def _finish(ctx: RunContext, incident: Incident, plan: Plan, approval_id: int | None, decision: Decision) -> Decision:
    logger = run_logger()
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
    elif decision.outcome == "withdrawn":
        message = f"Approval withdrawn ({decision.reason}): nothing was changed"
    else:
        message = f"Plan declined by {who}: {decision.reason}. Nothing was changed"
    logger.info(message)
    record(ctx, incident.id, decision.approver or "runbook", _DECISION_KIND[decision.outcome], message,
           ApprovalStep(plan_digest=plan.digest, automatic=decision.automatic))
    if decision.outcome in ("approved", "declined") and not decision.automatic:
        update_pagers(ctx, incident, "acknowledge", decision.approver or "approver", logger)  # a person answered
    return decision
