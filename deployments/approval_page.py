"""The approval page: approve or decline a pending plan with verified identity.

    GET  /approvals/<token>    the plan, the evidence, who has approved so far, and a form
    POST /approvals/<token>    approver, credential, decision (approve | decline), reason

The link carries the approval's random token, never its sequential id. Wrong credentials are
slowed down (`deployments/guards.py`, in Redis, so every intake process counts together): each
attempt is taken before the credential is checked and counts while in flight, and after 3
failures within 10 minutes for one request, approver name and real client address (or 10 for
one request and address), further answers from there are refused with 429 until the window
ends.
An answer is recorded only together with the resume of the run it completes: when Prefect
does not take the resume, the signature is taken back and the answer can be given again (and
if taking it back fails too, giving the same answer again is accepted as that answer).

Served by the alert intake (http://127.0.0.1:8787 after `make up`). A GET never decides
anything (mail and chat scanners prefetch links); only a POST with an approver configured for
the incident's environment and severity, and that approver's own credential, counts. When the
severity needs two approvers (`approval.four_eyes`), the first approval waits for a second,
different one. Once enough have approved (or one declined) the page resumes the waiting run
with the verified names; the run checks the signatures in the incident store again, so a
Resume from elsewhere cannot stand in for them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import html
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs

import orjson
import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from deployments.guards import Throttle, TooLarge, client_address, read_body
from deployments.prefect_api import PrefectApi, RunControls
from incidents.errors import RunbookError
from incidents.models import SIGNERS_SEPARATOR, Approval, EventKind, Signature, pause_key
from integrations.errors import IntegrationError, Unreachable

if TYPE_CHECKING:  # for the annotations only: the store and the config are imported where they are built
    from incidents.config import EnvironmentConfig
    from incidents.store_protocol import Records

log = logging.getLogger("runbooks.approvals")
MAX_FORM_BYTES = 16 * 1024
# An answer that comes before the run has paused for its request waits this long for the pause,
# looking every PAUSE_POLL_SECONDS (a run pauses within seconds of posting its request).
PAUSE_WAIT_SECONDS = 30.0
PAUSE_POLL_SECONDS = 0.5


class AnswerRefused(RunbookError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets of any length."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


_TOKEN = re.compile(r"^[A-Za-z0-9_-]{20,64}$")


def _load(token: str) -> tuple[Approval, Any]:
    from incidents.config import load_environment
    from incidents.store import IncidentStore

    approval = IncidentStore().approval_by_token(token) if _TOKEN.match(token) else None
    if approval is None or approval.environment is None:
        raise AnswerRefused(404, "no such approval request (links carry the request's token, as sent in Slack)")
    return approval, load_environment(approval.environment)


class Answer(NamedTuple):
    """What a verified answer came to: the HTTP status and what to tell the person; `repeat`
    when it was the same answer given again (a success that changed nothing)."""
    status: int
    message: str
    repeat: bool = False


class WrongCredential(AnswerRefused):
    """An unknown approver or a wrong credential: the one answer the throttle counts."""

    def __init__(self) -> None:
        super().__init__(403, "unknown approver or wrong credential")


def _escaped(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _signed(signatures: list[Signature]) -> str:
    """Who answered so far, as list items."""
    items = "".join(f"<li>{_escaped(s.approver)}: {_escaped(s.decision)} at {s.signed_at:%H:%M:%S} UTC"
                    f"{' — ' + _escaped(s.reason) if s.reason else ''}</li>" for s in signatures)
    return items or "<li>nobody yet</li>"


def _page(approval: Approval, config: EnvironmentConfig, signatures: list[Signature], message: str = "",
          status: int = 200) -> HTMLResponse:
    e = _escaped
    plan = approval.plan
    rows = "".join(f"<tr><td>{e(a.kind)}</td><td><code>{e(a.target)}</code></td><td>{e(a.before)} → "
                   f"{e(a.after)}</td><td>{e(a.via)}</td></tr>" for a in plan.actions)
    evidence = "".join(f"<li>{e(x)}</li>" for x in plan.evidence) or "<li>(none recorded)</li>"
    judgement = (f"<p><b>Confidence:</b> {e(plan.confidence)}</p><p><b>Evidence for</b></p><ul>"
                 + ("".join(f"<li>{e(x)}</li>" for x in plan.support) or "<li>(none)</li>")
                 + "</ul><p><b>Evidence against</b></p><ul>"
                 + ("".join(f"<li>{e(x)}</li>" for x in plan.against) or "<li>(none)</li>") + "</ul>")
    needed = max(1, config.approval.needed(approval.severity or ""))  # none joined: not four-eyes
    signed = _signed(signatures)
    state = (f"<p><b>Decided: {e(approval.decision)}</b> by {e(approval.approver or '-')}</p>"
             if approval.decision else
             f"<p>Needs {needed} different approver{'s' if needed > 1 else ''}. Deadline: "
             f"{approval.deadline_at:%Y-%m-%d %H:%M:%S} UTC (then declined).</p>" if approval.deadline_at else "")
    form = (
        ""
        if approval.decision
        else f"""
<form method="post" action="/approvals/{e(approval.token)}">
  <label>Your name <input name="approver" required autocomplete="username"></label><br>
  <label>Your approver credential
    <input name="credential" type="password" required autocomplete="current-password"></label><br>
  <label>Reason <input name="reason" size="60"></label><br>
  <button name="decision" value="approve">Approve this plan</button>
  <button name="decision" value="decline">Decline (nothing changes)</button>
</form>"""
    )
    body = f"""<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Approval {approval.id}: {e(approval.service)} ({e(approval.environment)})</title></head><body>
<h1>Approve remediation: {e(approval.service)} in {e(approval.environment)} ({e(approval.severity)})</h1>
<p>{e(approval.title)} — incident {approval.incident_id}, issue #{approval.github_issue or '-'}</p>
{f'<p role="status"><b>{e(message)}</b></p>' if message else ''}
<p>{e(plan.summary)}</p>
<table border="1" cellpadding="4">
<tr><th>Action</th><th>Target</th><th>Before → After</th><th>Via</th></tr>{rows}</table>
<h2>Why, and how sure</h2>{judgement}
<h2>All checks</h2><ul>{evidence}</ul>
<h2>Answers so far</h2><ul>{signed}</ul>
{state}{form}
<p><small>plan digest {e(approval.plan_digest[:16])}</small></p></body></html>"""
    return HTMLResponse(body, status, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def _answer(token: str, fields: dict[str, str], prefect: PrefectApi) -> Answer:
    """Check the approver's credential, then record the answer (`record_answer`)."""
    from tasks.context import SecretNotFound, resolve_secret

    approval, config = _load(token)
    if approval.decision:
        raise AnswerRefused(409, f"this request was already decided: {approval.decision}")
    name, credential = fields.get("approver", "").strip(), fields.get("credential", "")
    decision, reason = fields.get("decision", ""), fields.get("reason", "").strip()[:2000]
    if decision not in ("approve", "decline"):
        raise AnswerRefused(400, "decision must be approve or decline")
    if not name or not credential:
        raise AnswerRefused(400, "give your name and your approver credential")
    approver = config.approval.approver(name)
    try:
        genuine = approver is not None and _same(credential, resolve_secret(approver.credential_secret))
    except SecretNotFound as exc:
        log.error("approver %s has no credential configured: %s", name, exc)
        genuine = False
    if not genuine or approver is None:
        log.warning(
            "approval %s: refused an answer for %r (unknown approver or wrong credential)", approval.id, name
        )
        _store().add_event(approval.incident_id, "approval page", EventKind.APPROVAL_REFUSED,
                           f"An answer as {name[:100]!r} was refused: unknown approver or wrong credential")
        raise WrongCredential()
    return record_answer(approval, config, approver.name, decision, reason, prefect, via="approval page")


def _throttle_keys(token: str, fields: dict[str, str], client: str) -> dict[str, int]:
    """Attempts allowed per key: 3 per request, approver name and real client address (a
    stranger elsewhere cannot lock the approver out), 10 per request and address (one address
    trying many names)."""
    name = fields.get("approver", "").strip().lower()[:100]
    return {f"{token}|{name}|{client}": 3, f"{token}|{client}": 10}


def _store():
    from incidents.store import IncidentStore

    return IncidentStore()


def record_answer(approval: Approval, config: EnvironmentConfig, name: str, decision: str, reason: str,
                  prefect: RunControls, via: str) -> Answer:
    """Record a verified approver's answer and, when it completes the decision, resume the run.

    The answer counts only together with a successful resume: if Prefect does not take it, the
    signature is taken back (the person may answer again); if taking it back fails as well, the
    same answer given again is accepted as that answer and resumes the run."""
    store = _store()
    approver = config.approval.approver(name)
    if approver is None or approval.severity not in approver.severities:
        raise AnswerRefused(403, f"{name} may not answer {approval.severity} plans in {approval.environment}")
    approval_id = approval.id
    inserted = store.sign(approval_id, name, decision, reason)
    if not inserted:
        earlier = next((s for s in store.signatures(approval_id) if s.approver == name), None)
        if earlier is None or earlier.decision != decision:
            raise AnswerRefused(409, f"{name} already answered this request; four-eyes needs a different approver")
        log.info("approval %s: %s answered %s again", approval_id, name, decision)
    else:
        store.add_event(approval.incident_id, name, EventKind.APPROVAL_SIGNED,
                        f"{name} (verified, {via}) answered {decision}" + (f": {reason}" if reason else ""))
    approving = [s.approver for s in store.signatures(approval_id) if s.decision == "approve"]
    needed = max(1, config.approval.needed(approval.severity))
    if decision == "approve" and len(approving) < needed:
        if not inserted:  # a repeat (double click, resubmit): already recorded, changes nothing
            return Answer(202, f"Your approval was already recorded ({', '.join(approving)}); four-eyes needs "
                               f"{needed - len(approving)} more, different approver(s).", repeat=True)
        return Answer(
            202,
            f"Approved by {', '.join(approving)}; waiting for {needed - len(approving)} more different approver(s).",
        )
    run_input = {"approve": decision == "approve", "reason": reason or decision,
                 "approver": SIGNERS_SEPARATOR.join(approving) if decision == "approve" else name}
    problem = _hand_over(store, approval, name, run_input, prefect, inserted)
    if problem is not None:
        return _not_resumed(store, approval, name, decision, problem, prefect, inserted)
    if decision == "approve":
        return Answer(200, f"Approved by {run_input['approver']}; the run continues.")
    return Answer(200, f"Declined by {name}; nothing is changed and a person takes over.")


def _hand_over(store: Records, approval: Approval, name: str, run_input: dict, prefect: RunControls,
               inserted: bool) -> str | None:
    """Resume the run with the answer, waiting for its pause if it has not paused for this
    request yet; None when Prefect took it, else why not. AnswerRefused (and what this request
    recorded taken back) when the run will never wait for it or did not pause in time."""
    try:
        problem = _resume(approval.flow_run_id, run_input, prefect)
        if problem is not None and _on_its_way_to_the_pause(approval, prefect):
            problem = _resume_once_paused(approval, run_input, prefect)
    except AnswerRefused:
        if inserted:  # only what this request recorded may be taken back
            _take_back(store, approval, name, "the run is no longer waiting")
        raise
    if problem is not None and _on_its_way_to_the_pause(approval, prefect):
        if inserted:
            _take_back(store, approval, name, "the run had not paused for the request")
        raise AnswerRefused(503, f"not recorded: {problem}; answer again in a moment")
    return problem


def _not_resumed(store: Records, approval: Approval, name: str, decision: str, problem: str, prefect: RunControls,
                 inserted: bool) -> Answer:
    """Prefect did not take this request's resume. If the run has moved on anyway, another
    request resumed it (the same answer sent twice at once: a double click, a resubmitted form,
    a replayed press; or another approver's): this answer is on record, and it stays. Only
    while the run still waits was the resume lost: then what this request recorded, and
    nothing else, is taken back, and the person answers again."""
    if approval.flow_run_id and not _still_paused(approval.flow_run_id, prefect):
        return Answer(200, f"{name}'s answer ({decision}) is recorded and the run has resumed; nothing more to do.",
                      repeat=not inserted)
    if not inserted:
        raise AnswerRefused(503, f"{name}'s answer is recorded but the run could not be resumed ({problem}); "
                           "give the same answer again in a moment")
    taken_back = _take_back(store, approval, name, "Prefect did not take the resume")
    raise AnswerRefused(503, f"not recorded: the run could not be resumed ({problem}); answer again in a moment"
                  if taken_back else f"the run could not be resumed ({problem}); give the same answer again")


def _on_its_way_to_the_pause(approval: Approval, prefect: RunControls) -> bool:
    """Whether the run has not paused for this request yet: the request's message goes out a
    moment before the run pauses (~2 s on a loaded 2-core machine), and a press in between met a
    run that was still running. Taking that for "another request resumed it" lost the answer: the
    signature stayed, the message lost its buttons, and the run paused and waited for ever
    (found by the failover benchmark). A run that is running or about to, for which Prefect holds
    no answer under this request's pause key, is on its way."""
    if not approval.flow_run_id:
        return False
    try:
        state = prefect.flow_run(approval.flow_run_id).get("state") or {}
    except (IntegrationError, ValueError):
        return False
    return state.get("type") in ("RUNNING", "PENDING", "SCHEDULED") and not _answer_held(approval, prefect)


def _answer_held(approval: Approval, prefect: RunControls) -> bool:
    """Whether Prefect holds a Resume's answer for this request's pause (unknown counts as held)."""
    key = pause_key(approval.plan_digest, approval.attempt)
    for state_name in ("suspended", "paused"):
        path = f"/flow_runs/{approval.flow_run_id}/input/{state_name}-{key}-response"
        try:
            if prefect.call("GET", path, ok=(404,)).status_code != 404:
                return True
        except IntegrationError:
            return True
    return False


def _resume_once_paused(approval: Approval, run_input: dict, prefect: RunControls) -> str | None:
    """Hand the answer over once the run has paused for it; why not, if it does not within
    PAUSE_WAIT_SECONDS (the answer is then taken back, and the person answers again)."""
    assert approval.flow_run_id is not None
    deadline = time.monotonic() + PAUSE_WAIT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(PAUSE_POLL_SECONDS)
        if not _on_its_way_to_the_pause(approval, prefect):
            return _resume(approval.flow_run_id, run_input, prefect)
    return f"the run did not pause for this request within {PAUSE_WAIT_SECONDS:g} s"


def _still_paused(flow_run_id: str, prefect: RunControls) -> bool:
    """Whether the run still waits for an answer (unknown counts as waiting)."""
    try:
        state = prefect.flow_run(flow_run_id).get("state") or {}
    except (IntegrationError, ValueError):
        return True
    return state.get("type") == "PAUSED"


def _resume(flow_run_id: str | None, run_input: dict, prefect: RunControls) -> str | None:
    """Resume the waiting run with the answer; None when Prefect took it, else why not."""
    if not flow_run_id:
        return "the request has no run"
    try:
        body = prefect.resume(flow_run_id, run_input).json()
    except IntegrationError as exc:
        return "Prefect API: unreachable" if isinstance(exc, Unreachable) else f"Prefect API: HTTP {exc.status}"
    except ValueError as exc:
        return f"Prefect API: {type(exc).__name__}"
    if body.get("status") != "ACCEPT":
        ended = _ended(flow_run_id, prefect)
        if ended:
            raise AnswerRefused(409, f"the run is no longer waiting (it is {ended}): nothing was changed, and "
                               "nothing will be; the incident is with a person")
        return "the run did not accept it: " + str((body.get("details") or {}).get("reason", body.get("status")))[:200]
    return None


def _ended(flow_run_id: str, prefect: RunControls) -> str | None:
    """The final state's name of a run that will never wait again (cancelled, crashed, ...)."""
    try:
        state = prefect.flow_run(flow_run_id).get("state") or {}
    except (IntegrationError, ValueError):
        return None
    return state.get("name") if state.get("type") in ("CANCELLED", "CANCELLING", "CRASHED", "FAILED",
                                                      "COMPLETED") else None


def _take_back(store: Records, approval: Approval, name: str, why: str) -> bool:
    from incidents.store import StoreError

    try:
        taken = store.unsign(approval.id, name)
        store.add_event(approval.incident_id, name, EventKind.APPROVAL_NOT_DELIVERED,
                        f"{name}'s answer was not delivered to the run ({why}): taken back")
        return taken
    except StoreError as exc:
        log.error("approval %s: %s's answer could not be taken back: %s", approval.id, name, exc)
        return False


def routes(prefect: PrefectApi, redis: Callable[[], aioredis.Redis]) -> list[Route]:
    throttle = Throttle(redis)

    async def show(request: Request) -> Response:
        token = request.path_params["token"]

        def load() -> HTMLResponse:
            approval, config = _load(token)
            return _page(approval, config, _store().signatures(approval.id))
        try:
            return await run_in_threadpool(load)
        except AnswerRefused as exc:
            return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", exc.status)

    async def decide(request: Request) -> Response:
        token = request.path_params["token"]
        try:
            fields = _fields(request, await read_body(request, MAX_FORM_BYTES))
        except TooLarge:
            return _reply(request, 413, "form too large")
        except AnswerRefused as exc:
            return _reply(request, exc.status, str(exc))
        keys = _throttle_keys(token, fields, client_address(request))
        try:
            wait = await throttle.reserve(keys)
        except aioredis.RedisError as exc:
            log.error("approval page: the throttle (Redis) is unavailable: %s", exc)
            return _reply(request, 503, "the approval page cannot check attempts right now; try again in a moment")
        if wait:
            return _reply(request, 429, f"too many wrong credentials, or attempts at once: try again in {wait} s",
                          {"Retry-After": str(wait)})
        failed = False
        try:
            answer = await run_in_threadpool(_answer, token, fields, prefect)
            status, message = answer.status, answer.message
        except WrongCredential as exc:
            status, message, failed = exc.status, str(exc), True
        except AnswerRefused as exc:
            status, message = exc.status, str(exc)
        finally:
            with contextlib.suppress(aioredis.RedisError):
                await throttle.finish(list(keys), failed)
        if "text/html" in request.headers.get("accept", ""):
            def render() -> Response:
                approval, config = _load(token)
                return _page(approval, config, _store().signatures(approval.id), message, status)
            try:
                return await run_in_threadpool(render)
            except AnswerRefused as exc:
                return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", exc.status)
        return _reply(request, status, message)

    return [Route("/approvals/{token}", show, methods=["GET"]),
            Route("/approvals/{token}", decide, methods=["POST"])]


def _fields(request: Request, body: bytes) -> dict[str, str]:
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AnswerRefused(400, "body is not JSON") from None
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _reply(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"status": status, "message": message}), status, media_type="application/json",
                    headers=headers)
