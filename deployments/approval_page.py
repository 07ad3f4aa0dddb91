"""The approval page: approve or decline a pending plan with verified identity.

    GET  /approvals/<id>    the plan, the evidence, who has approved so far, and a form
    POST /approvals/<id>    approver, credential, decision (approve | decline), reason

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
from typing import Any
from urllib.parse import parse_qs

import httpx
import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

log = logging.getLogger("runbooks.approvals")
MAX_FORM_BYTES = 16 * 1024


class Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets of any length."""
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest())


def _load(approval_id: int) -> tuple[dict, Any]:
    from incidents.config import load_environment
    from incidents.store import IncidentStore

    store = IncidentStore()
    approval = store.approval(approval_id)
    if approval is None:
        raise Refused(404, f"no approval request {approval_id}")
    return approval, load_environment(approval["environment"])


def _page(approval: dict, config: Any, signatures: list[dict], message: str = "", status: int = 200) -> HTMLResponse:
    e = html.escape
    plan = approval["plan"] or {}
    rows = "".join(f"<tr><td>{e(a['kind'])}</td><td><code>{e(a['target'])}</code></td><td>{e(a['before'])} → "
                   f"{e(a['after'])}</td><td>{e(a['via'])}</td></tr>" for a in plan.get("actions", []))
    evidence = "".join(f"<li>{e(x)}</li>" for x in plan.get("evidence", [])) or "<li>(none recorded)</li>"
    judgement = (f"<p><b>Confidence:</b> {e(plan.get('confidence', 'strong'))}</p><p><b>Evidence for</b></p><ul>"
                 + ("".join(f"<li>{e(x)}</li>" for x in plan.get("support", [])) or "<li>(none)</li>")
                 + "</ul><p><b>Evidence against</b></p><ul>"
                 + ("".join(f"<li>{e(x)}</li>" for x in plan.get("against", [])) or "<li>(none)</li>") + "</ul>")
    needed = max(1, config.approval.needed(approval["severity"]))
    signed = "".join(f"<li>{e(s['approver'])}: {e(s['decision'])} at {s['signed_at']:%H:%M:%S} UTC"
                     f"{' — ' + e(s['reason']) if s['reason'] else ''}</li>" for s in signatures) or "<li>nobody yet</li>"
    state = (f"<p><b>Decided: {e(approval['decision'])}</b> by {e(approval['approver'] or '-')}</p>"
             if approval["decision"] else
             f"<p>Needs {needed} different approver{'s' if needed > 1 else ''}. Deadline: "
             f"{approval['deadline_at']:%Y-%m-%d %H:%M:%S} UTC (then declined).</p>" if approval["deadline_at"] else "")
    form = "" if approval["decision"] else f"""
<form method="post" action="/approvals/{approval['id']}">
  <label>Your name <input name="approver" required autocomplete="username"></label><br>
  <label>Your approver credential <input name="credential" type="password" required autocomplete="current-password"></label><br>
  <label>Reason <input name="reason" size="60"></label><br>
  <button name="decision" value="approve">Approve this plan</button>
  <button name="decision" value="decline">Decline (nothing changes)</button>
</form>"""
    body = f"""<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">
<title>Approval {approval['id']}: {e(approval['service'])} ({e(approval['environment'])})</title></head><body>
<h1>Approve remediation: {e(approval['service'])} in {e(approval['environment'])} ({e(approval['severity'])})</h1>
<p>{e(approval['title'])} — incident {approval['incident_id']}, issue #{approval['github_issue'] or '-'}</p>
{f'<p role="status"><b>{e(message)}</b></p>' if message else ''}
<p>{e(plan.get('summary', ''))}</p>
<table border="1" cellpadding="4"><tr><th>Action</th><th>Target</th><th>Before → After</th><th>Via</th></tr>{rows}</table>
<h2>Why, and how sure</h2>{judgement}
<h2>All checks</h2><ul>{evidence}</ul>
<h2>Answers so far</h2><ul>{signed}</ul>
{state}{form}
<p><small>plan digest {e(approval['plan_digest'][:16])}</small></p></body></html>"""
    return HTMLResponse(body, status, headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"})


def _answer(approval_id: int, fields: dict[str, str], prefect_api_url: str, headers: dict[str, str]) -> tuple[int, str]:
    """Check and record one answer; resume the run when the decision is complete."""
    from incidents.store import IncidentStore
    from tasks.context import SecretNotFound, resolve_secret

    approval, config = _load(approval_id)
    store = IncidentStore()
    if approval["decision"]:
        raise Refused(409, f"this request was already decided: {approval['decision']}")
    name, credential = fields.get("approver", "").strip(), fields.get("credential", "")
    decision, reason = fields.get("decision", ""), fields.get("reason", "").strip()[:2000]
    if decision not in ("approve", "decline"):
        raise Refused(400, "decision must be approve or decline")
    if not name or not credential:
        raise Refused(400, "give your name and your approver credential")
    approver = config.approval.approver(name)
    try:
        genuine = approver is not None and _same(credential, resolve_secret(approver.credential_secret))
    except SecretNotFound as exc:
        log.error("approver %s has no credential configured: %s", name, exc)
        genuine = False
    if not genuine:
        log.warning("approval %s: refused an answer for %r (unknown approver or wrong credential)", approval_id, name)
        store.add_event(approval["incident_id"], "approval page", "approval_refused",
                        f"An answer as {name[:100]!r} was refused: unknown approver or wrong credential")
        raise Refused(403, "unknown approver or wrong credential")
    if approval["severity"] not in approver.severities:
        raise Refused(403, f"{name} may not answer {approval['severity']} plans in {approval['environment']}")
    if not store.sign(approval_id, name, decision, reason):
        raise Refused(409, f"{name} already answered this request; four-eyes needs a different approver")
    store.add_event(approval["incident_id"], name, "approval_signed",
                    f"{name} (verified) answered {decision}" + (f": {reason}" if reason else ""))
    approving = [s["approver"] for s in store.signatures(approval_id) if s["decision"] == "approve"]
    needed = max(1, config.approval.needed(approval["severity"]))
    if decision == "approve" and len(approving) < needed:
        return 202, f"Approved by {', '.join(approving)}; waiting for {needed - len(approving)} more different approver(s)."
    run_input = {"approve": decision == "approve", "reason": reason or decision,
                 "approver": " + ".join(approving) if decision == "approve" else name}
    try:
        answer = httpx.post(f"{prefect_api_url.rstrip('/')}/flow_runs/{approval['flow_run_id']}/resume",
                            json={"run_input": run_input}, headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise Refused(503, f"recorded, but the run could not be resumed (Prefect API: {type(exc).__name__}); "
                           "answer again in a moment") from None
    if answer.get("status") != "ACCEPT":
        reason_text = (answer.get("details") or {}).get("reason", answer.get("status"))
        raise Refused(409, f"recorded, but the run did not accept it: {reason_text}")
    return 200, ("Approved" if decision == "approve" else "Declined") + f" by {run_input['approver']}; the run continues."


def routes(prefect_api_url: str, headers: dict[str, str] | None = None) -> list[Route]:
    headers = headers or {}

    async def show(request: Request) -> Response:
        approval_id = request.path_params["approval_id"]

        def load() -> HTMLResponse:
            from incidents.store import IncidentStore

            approval, config = _load(approval_id)
            return _page(approval, config, IncidentStore().signatures(approval_id))
        try:
            return await run_in_threadpool(load)
        except Refused as exc:
            return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", exc.status)

    async def decide(request: Request) -> Response:
        approval_id = request.path_params["approval_id"]
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return _reply(request, 413, "form too large")
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                data = orjson.loads(body)
                fields = {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
            else:
                fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
            status, message = await run_in_threadpool(_answer, approval_id, fields, prefect_api_url, headers)
        except orjson.JSONDecodeError:
            status, message = 400, "body is not JSON"
        except Refused as exc:
            status, message = exc.status, str(exc)
        if "text/html" in request.headers.get("accept", ""):
            def render() -> Response:
                from incidents.store import IncidentStore

                approval, config = _load(approval_id)
                return _page(approval, config, IncidentStore().signatures(approval_id), message, status)
            try:
                return await run_in_threadpool(render)
            except Refused as exc:
                return HTMLResponse(f"<p>{html.escape(str(exc))}</p>", exc.status)
        return _reply(request, status, message)

    return [Route("/approvals/{approval_id:int}", show, methods=["GET"]),
            Route("/approvals/{approval_id:int}", decide, methods=["POST"])]


def _reply(request: Request, status: int, message: str) -> Response:
    return Response(orjson.dumps({"status": status, "message": message}), status, media_type="application/json")
