"""The approval page: approve or decline a pending plan with verified identity.

    GET  /approvals/<token>    the plan, the evidence, who has approved so far, and a form
    POST /approvals/<token>    approver, credential, decision (approve | decline), reason

The link carries the approval's random token, never its sequential id. Repeated wrong
credentials (per client address and per approver name) are slowed down: after 3 failures
within 10 minutes, further answers are refused with 429 for a pause that doubles each time.
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

import hashlib
import hmac
import html
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from deployments.prefect_api import PrefectApi
from incidents.models import Approval, EventKind, Signature
from incidents.plans import Plan
from integrations.errors import IntegrationError, Unreachable

log = logging.getLogger("runbooks.approvals")
MAX_FORM_BYTES = 16 * 1024


class Refused(Exception):
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
        raise Refused(404, "no such approval request (links carry the request's token, as sent in Slack)")
    return approval, load_environment(approval.environment)


class Throttle:
    """Slows down guessing: after `free` failures within `window` seconds for a key, answers are
    refused for a pause that doubles with each further failure (at most `ceiling` seconds).
    Kept in this process: several intakes each count their own."""

    def __init__(self, free: int = 3, window: float = 600.0, ceiling: float = 300.0):
        self.free, self.window, self.ceiling = free, window, ceiling
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def wait(self, *keys: str) -> float:
        """Seconds until these keys may try again (0: now)."""
        now = time.monotonic()
        longest = 0.0
        with self._lock:
            for key in keys:
                recent = [t for t in self._failures.pop(key, []) if now - t < self.window]
                if recent:  # keys whose failures have aged out are forgotten, so the table stays small
                    self._failures[key] = recent
                if len(recent) >= self.free:
                    pause = min(self.ceiling, 2.0 ** (len(recent) - self.free + 1))
                    longest = max(longest, recent[-1] + pause - now)
        return max(0.0, longest)

    def failed(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, []).append(time.monotonic())


class Slowed(Refused):
    def __init__(self, seconds: float):
        super().__init__(429, f"too many wrong credentials: try again in {seconds:.0f} s")
        self.retry_after = max(1, int(seconds + 0.999))


def _escaped(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _signed(signatures: list[Signature]) -> str:
    """Who answered so far, as list items."""
    items = "".join(f"<li>{_escaped(s.approver)}: {_escaped(s.decision)} at {s.signed_at:%H:%M:%S} UTC"
                    f"{' — ' + _escaped(s.reason) if s.reason else ''}</li>" for s in signatures)
    return items or "<li>nobody yet</li>"


def _page(approval: Approval, config: Any, signatures: list[Signature], message: str = "",
          status: int = 200) -> HTMLResponse:
    e = _escaped
    plan = Plan.from_dict(approval.plan)
    rows = "".join(f"<tr><td>{e(a.kind)}</td><td><code>{e(a.target)}</code></td><td>{e(a.before)} → "
                   f"{e(a.after)}</td><td>{e(a.via)}</td></tr>" for a in plan.actions)
    evidence = "".join(f"<li>{e(x)}</li>" for x in plan.evidence) or "<li>(none recorded)</li>"
    judgement = (f"<p><b>Confidence:</b> {e(plan.confidence)}</p><p><b>Evidence for</b></p><ul>"
                 + ("".join(f"<li>{e(x)}</li>" for x in plan.support) or "<li>(none)</li>")
                 + "</ul><p><b>Evidence against</b></p><ul>"
                 + ("".join(f"<li>{e(x)}</li>" for x in plan.against) or "<li>(none)</li>") + "</ul>")
    needed = max(1, config.approval.needed(approval.severity))
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


def _answer(token: str, fields: dict[str, str], prefect: PrefectApi, throttle: Throttle,
            client: str) -> tuple[int, str]:
    """Check the approver's credential, then record the answer (`record_answer`)."""
    from tasks.context import SecretNotFound, resolve_secret

    approval, config = _load(token)
    if approval.decision:
        raise Refused(409, f"this request was already decided: {approval.decision}")
    name, credential = fields.get("approver", "").strip(), fields.get("credential", "")
    decision, reason = fields.get("decision", ""), fields.get("reason", "").strip()[:2000]
    if decision not in ("approve", "decline"):
        raise Refused(400, "decision must be approve or decline")
    if not name or not credential:
        raise Refused(400, "give your name and your approver credential")
    keys = (f"client:{client}", f"name:{name.lower()[:100]}")
    pause = throttle.wait(*keys)
    if pause > 0:
        raise Slowed(pause)
    approver = config.approval.approver(name)
    try:
        genuine = approver is not None and _same(credential, resolve_secret(approver.credential_secret))
    except SecretNotFound as exc:
        log.error("approver %s has no credential configured: %s", name, exc)
        genuine = False
    if not genuine:
        throttle.failed(*keys)
        log.warning(
            "approval %s: refused an answer for %r (unknown approver or wrong credential)", approval.id, name
        )
        _store().add_event(approval.incident_id, "approval page", EventKind.APPROVAL_REFUSED,
                           f"An answer as {name[:100]!r} was refused: unknown approver or wrong credential")
        raise Refused(403, "unknown approver or wrong credential")
    return record_answer(approval, config, approver.name, decision, reason, prefect, via="approval page")


def _store():
    from incidents.store import IncidentStore

    return IncidentStore()


def record_answer(approval: Approval, config: Any, name: str, decision: str, reason: str, prefect: PrefectApi,
                  via: str) -> tuple[int, str]:
    """Record a verified approver's answer and, when it completes the decision, resume the run.

    The answer counts only together with a successful resume: if Prefect does not take it, the
    signature is taken back (the person may answer again); if taking it back fails as well, the
    same answer given again is accepted as that answer and resumes the run."""
    store = _store()
    approver = config.approval.approver(name)
    if approver is None or approval.severity not in approver.severities:
        raise Refused(403, f"{name} may not answer {approval.severity} plans in {approval.environment}")
    approval_id = approval.id
    if not store.sign(approval_id, name, decision, reason):
        earlier = next((s for s in store.signatures(approval_id) if s.approver == name), None)
        if earlier is None or earlier.decision != decision or decision == "approve" and not _completes(
                store, config, approval):
            raise Refused(409, f"{name} already answered this request; four-eyes needs a different approver")
        log.info("approval %s: %s answered %s again: resuming the run with it", approval_id, name, decision)
    else:
        store.add_event(approval.incident_id, name, EventKind.APPROVAL_SIGNED,
                        f"{name} (verified, {via}) answered {decision}" + (f": {reason}" if reason else ""))
    approving = [s.approver for s in store.signatures(approval_id) if s.decision == "approve"]
    needed = max(1, config.approval.needed(approval.severity))
    if decision == "approve" and len(approving) < needed:
        return (
            202,
            f"Approved by {', '.join(approving)}; waiting for {needed - len(approving)} more different approver(s).",
        )
    run_input = {"approve": decision == "approve", "reason": reason or decision,
                 "approver": " + ".join(approving) if decision == "approve" else name}
    try:
        problem = _resume(approval.flow_run_id, run_input, prefect)
    except Refused:
        _take_back(store, approval, name, "the run is no longer waiting")
        raise
    if problem is not None:
        taken_back = _take_back(store, approval, name, "Prefect did not take the resume")
        raise Refused(503, f"not recorded: the run could not be resumed ({problem}); answer again in a moment"
                      if taken_back else f"the run could not be resumed ({problem}); give the same answer again")
    if decision == "approve":
        return 200, f"Approved by {run_input['approver']}; the run continues."
    return 200, f"Declined by {name}; nothing is changed and a person takes over."


def _completes(store: Any, config: Any, approval: Approval) -> bool:
    approving = {s.approver for s in store.signatures(approval.id) if s.decision == "approve"}
    return len(approving) >= max(1, config.approval.needed(approval.severity))


def _resume(flow_run_id: str | None, run_input: dict, prefect: PrefectApi) -> str | None:
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
            raise Refused(409, f"the run is no longer waiting (it is {ended}): nothing was changed, and "
                               "nothing will be; the incident is with a person")
        return "the run did not accept it: " + str((body.get("details") or {}).get("reason", body.get("status")))[:200]
    return None


def _ended(flow_run_id: str, prefect: PrefectApi) -> str | None:
    """The final state's name of a run that will never wait again (cancelled, crashed, ...)."""
    try:
        state = prefect.flow_run(flow_run_id).get("state") or {}
    except (IntegrationError, ValueError):
        return None
    return state.get("name") if state.get("type") in ("CANCELLED", "CANCELLING", "CRASHED", "FAILED",
                                                      "COMPLETED") else None


def _take_back(store: Any, approval: Approval, name: str, why: str) -> bool:
    from incidents.store import StoreError

    try:
        taken = store.unsign(approval.id, name)
        store.add_event(approval.incident_id, name, EventKind.APPROVAL_NOT_DELIVERED,
                        f"{name}'s answer was not delivered to the run ({why}): taken back")
        return taken
    except StoreError as exc:
        log.error("approval %s: %s's answer could not be taken back: %s", approval.id, name, exc)
        return False


def routes(prefect: PrefectApi) -> list[Route]:
    throttle = Throttle()

    async def show(request: Request) -> Response:
        token = request.path_params["token"]

        def load() -> HTMLResponse:
            approval, config = _load(token)
            return _page(approval, config, _store().signatures(approval.id))
        try:
            return await run_in_threadpool(load)
        except Refused as exc:
            return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", exc.status)

    async def decide(request: Request) -> Response:
        token = request.path_params["token"]
        client = request.client.host if request.client else "unknown"
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return _reply(request, 413, "form too large")
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                data = orjson.loads(body)
                fields = {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            else:
                fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
            status, message = await run_in_threadpool(_answer, token, fields, prefect, throttle, client)
        except orjson.JSONDecodeError:
            status, message = 400, "body is not JSON"
        except Slowed as exc:
            return _reply(request, exc.status, str(exc), {"Retry-After": str(exc.retry_after)})
        except Refused as exc:
            status, message = exc.status, str(exc)
        if "text/html" in request.headers.get("accept", ""):
            def render() -> Response:
                approval, config = _load(token)
                return _page(approval, config, _store().signatures(approval.id), message, status)
            try:
                return await run_in_threadpool(render)
            except Refused as exc:
                return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", exc.status)
        return _reply(request, status, message)

    return [Route("/approvals/{token}", show, methods=["GET"]),
            Route("/approvals/{token}", decide, methods=["POST"])]


def _reply(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps({"status": status, "message": message}), status, media_type="application/json",
                    headers=headers)
