"""GitHub REST: workflow runs and dispatch, jobs and their logs, commits, issues."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol, Self
from urllib.parse import quote

import httpx

from integrations.errors import Closing, IntegrationError, Refused, TimedOut, refusal
from integrations.github_views import CommentView, CommitView, IssueView, JobView, RunView
from integrations.http import DEFAULT_TIMEOUT, RetryPolicy, rate_limited, refused, request
from integrations.http import client as http_client

API_VERSION = "2022-11-28"
# The input a dispatched workflow is sent and shows in its run-name, so its run can be found
# where GitHub does not return it (see `GitHubClient.dispatch_workflow`).
DISPATCH_INPUT = "dispatch_id"


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _repo_path(repo: str) -> str:
    owner, _, name = repo.partition("/")
    if not owner or not name or "/" in name:
        raise ValueError(f"GitHub repository must look like owner/name, got {repo!r}")
    return f"/repos/{quote(owner, safe='')}/{quote(name, safe='')}"


class GitHub(Protocol):
    """What the runbooks ask of GitHub. GitHubClient is the real one; the unit tier's fake
    (tests/fakes.py) implements the same, and mypy holds both to it."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def workflow_runs(self, repo: str, *, since: datetime | None = None, workflow: str | None = None,
                      event: str | None = None, per_page: int = 20) -> list[RunView]: ...

    def find_dispatched_run(self, repo: str, workflow: str, dispatch_id: str, since: datetime) -> RunView | None: ...

    def dispatch_workflow(self, repo: str, workflow: str, ref: str, inputs: dict[str, str], dispatch_id: str, *,
                          confirm_seconds: float = 10.0) -> int: ...

    def wait_for_run(self, repo: str, workflow: str, run_id: int, *, timeout: float = 300,
                     poll: float = 2.0) -> RunView: ...

    def failed_job_logs(self, repo: str, run_id: int, tail_lines: int = 40) -> dict[str, str]: ...

    def recent_commits(self, repo: str, *, since: datetime | None = None, per_page: int = 10) -> list[CommitView]: ...

    def create_issue(self, repo: str, title: str, body: str, labels: list[str],
                     assignees: list[str] | None = None) -> IssueView: ...

    def comment(self, repo: str, number: int, body: str) -> CommentView: ...

    def close_issue(self, repo: str, number: int, reason: str = "completed") -> IssueView: ...

    def update_issue(self, repo: str, number: int, *, title: str | None = None, body: str | None = None,
                     labels: list[str] | None = None) -> IssueView: ...

    def get_issue(self, repo: str, number: int) -> IssueView: ...


class GitHubClient(Closing):
    def __init__(self, api_url: str, token: str, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 retry: RetryPolicy = RetryPolicy(), transport: httpx.BaseTransport | None = None):
        """`transport`: a test's httpx.MockTransport; None sends to the network."""
        self.retry = retry
        self._transport = transport
        self._http = http_client(
            base_url=api_url.rstrip("/"), timeout=timeout, follow_redirects=False, transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                     "X-GitHub-Api-Version": API_VERSION, "User-Agent": "incident-runbooks"})

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return request(self._http, method, path, what=f"GitHub {method} {path}", retry=self.retry, **kwargs)

    # -- Actions --------------------------------------------------------------------------------
    def workflow_runs(self, repo: str, *, since: datetime | None = None, workflow: str | None = None,
                      event: str | None = None, per_page: int = 20) -> list[RunView]:
        path = _repo_path(repo) + (
            f"/actions/workflows/{quote(workflow, safe='')}/runs" if workflow else "/actions/runs"
        )
        params: dict[str, Any] = {"per_page": per_page}
        if since:
            params["created"] = f">={iso(since)}"
        if event:
            params["event"] = event
        return [RunView.from_api(r) for r in self._call("GET", path, params=params).json().get("workflow_runs", [])]

    def get_run(self, repo: str, run_id: int) -> RunView:
        return RunView.from_api(self._call("GET", f"{_repo_path(repo)}/actions/runs/{int(run_id)}").json())

    def dispatch_workflow(self, repo: str, workflow: str, ref: str, inputs: dict[str, str], dispatch_id: str, *,
                          confirm_seconds: float = 10.0) -> int:
        """Start a workflow_dispatch run and return its id, never guessed. GitHub returns the
        run it created when asked (`return_run_details`, changelog 2026-02-19: 200 with
        `workflow_run_id`). A server that refuses the parameter (older Enterprise Server: 400 or
        422 naming it) is sent the dispatch again without it, and the run is found by
        `dispatch_id`, an input the workflow shows in its run-name (`display_title`); a lost
        answer is resolved the same way, so the POST is never simply repeated (`_post_once`)."""
        path = f"{_repo_path(repo)}/actions/workflows/{quote(workflow, safe='')}/dispatches"
        payload: dict[str, Any] = {"ref": ref, "inputs": {**inputs, DISPATCH_INPUT: dispatch_id}}
        since = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=5)
        found: list[int] = []

        def made() -> bool:
            run = self._await_dispatched(repo, workflow, dispatch_id, since, confirm_seconds)
            found.extend([run.id] if run else [])
            return run is not None

        try:
            response = self._post_once(path, {**payload, "return_run_details": True}, made)
        except Refused as exc:
            if exc.status not in (400, 422) or "return_run_details" not in exc.reason:
                raise
            response = self._post_once(path, payload, made)  # a server without run details
        if found:
            return found[0]
        if response is not None and response.status_code == 200 and "workflow_run_id" in response.json():
            return int(response.json()["workflow_run_id"])
        run = self._await_dispatched(repo, workflow, dispatch_id, since, confirm_seconds * 3)
        if run is None:
            raise TimedOut(f"GitHub workflow {workflow} in {repo}",
                           f"the dispatch was accepted but no run with dispatch_id {dispatch_id} appeared (does the "
                           f"workflow's run-name show inputs.{DISPATCH_INPUT}?)")
        return run.id

    def find_dispatched_run(self, repo: str, workflow: str, dispatch_id: str, since: datetime) -> RunView | None:
        """The run a dispatch with this `dispatch_id` created (its run-name shows the id), or None."""
        runs = self.workflow_runs(repo, workflow=workflow, event="workflow_dispatch", since=since, per_page=50)
        return next((r for r in runs if dispatch_id in (r.display_title or "")), None)

    def _await_dispatched(self, repo: str, workflow: str, dispatch_id: str, since: datetime,
                          seconds: float) -> RunView | None:
        deadline = time.monotonic() + seconds
        while True:
            run = self.find_dispatched_run(repo, workflow, dispatch_id, since)
            if run is not None or time.monotonic() >= deadline:
                return run
            time.sleep(1.0)

    def _post_once(self, path: str, payload: dict[str, Any], made: Callable[[], Any]) -> httpx.Response | None:
        """POST that is never simply sent again: when its answer is lost (a timeout, a dropped
        connection, a 5xx) GitHub may have acted on it, so `made()` looks for what it would have
        made first (an issue, a comment, a run) and it is sent again only when nothing is found.
        A rate limit (429, or GitHub's 403 with Retry-After or its limit spent) was not acted on and
        is sent again after the limit's wait, without a look. When the look itself fails,
        it raises rather than risk doing the work twice. Returns the response, or None when
        `made()` found the work done."""
        what = f"GitHub POST {path}"
        for attempt in range(1, self.retry.attempts + 1):
            try:
                response = request(self._http, "POST", path, what=what, retry=RetryPolicy(attempts=1),
                                   ok=(403, 429), json=payload)
            except IntegrationError as exc:
                if not exc.transient or attempt == self.retry.attempts:
                    raise
                try:
                    if made():
                        return None
                except IntegrationError:  # cannot tell whether it was acted on: never send it blind
                    raise type(exc)(
                        what,
                        f"{exc.reason}; whether GitHub acted on it could not be checked, so it was not sent again",
                        status=exc.status,
                        transient=True,
                    ) from None
                time.sleep(self.retry.delay(attempt, None))
                continue
            if response.status_code not in (403, 429):
                return response
            if not rate_limited(response):
                raise refused(what, response)  # a 403 that is no rate limit: refused, never sent again
            if attempt == self.retry.attempts:
                raise refusal(what, f"HTTP {response.status_code}: rate limited (after {attempt} attempts)",
                              response.status_code, transient=True)
            time.sleep(self.retry.delay(attempt, response))  # not acted on: again after its Retry-After
        raise AssertionError("unreachable")

    def wait_for_run(self, repo: str, workflow: str, run_id: int, *, timeout: float = 300,
                     poll: float = 2.0) -> RunView:
        """Poll a workflow run until it completes (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.get_run(repo, run_id)
            if run.status == "completed":
                return run
            if time.monotonic() >= deadline:
                raise TimedOut(f"GitHub workflow {workflow} in {repo}",
                               f"run {run_id} still {run.status} after {timeout:g} s")
            time.sleep(poll)

    def run_jobs(self, repo: str, run_id: int) -> list[JobView]:
        jobs = self._call("GET", f"{_repo_path(repo)}/actions/runs/{int(run_id)}/jobs").json().get("jobs", [])
        return [JobView.from_api(job) for job in jobs]

    def job_logs(self, repo: str, job_id: int, tail_lines: int = 40) -> str:
        """The job's log. GitHub answers with a redirect to short-lived storage; the token is
        not sent there."""
        path = f"{_repo_path(repo)}/actions/jobs/{int(job_id)}/logs"
        response = self._call("GET", path)
        if response.is_redirect:
            location = response.headers["Location"]
            with http_client(timeout=self._http.timeout, transport=self._transport) as plain:
                response = request(
                    plain, "GET", location, what=f"GitHub log download for job {job_id}", retry=self.retry
                )
        lines = response.text.splitlines()
        return "\n".join(lines[-tail_lines:])

    def failed_job_logs(self, repo: str, run_id: int, tail_lines: int = 40) -> dict[str, str]:
        """`gh run view --log-failed`: the log tail of each failed job of a run."""
        return {job.name: self.job_logs(repo, job.id, tail_lines)
                for job in self.run_jobs(repo, run_id) if job.conclusion == "failure"}

    # -- commits and issues -----------------------------------------------------------------------
    def recent_commits(self, repo: str, *, since: datetime | None = None, per_page: int = 10) -> list[CommitView]:
        params: dict[str, Any] = {"per_page": per_page}
        if since:
            params["since"] = iso(since)
        return [CommitView.from_api(c) for c in self._call("GET", f"{_repo_path(repo)}/commits", params=params).json()]

    def create_issue(self, repo: str, title: str, body: str, labels: list[str],
                     assignees: list[str] | None = None) -> IssueView:
        """Open an issue once: a lost answer is resolved by finding the issue it opened."""
        payload: dict[str, Any] = {"title": title, "body": body, "labels": labels}
        if assignees:
            payload["assignees"] = assignees
        found: list[dict[str, Any]] = []

        def opened() -> bool:
            recent = self._call("GET", f"{_repo_path(repo)}/issues",
                                params={"state": "all", "sort": "created", "direction": "desc", "per_page": 10}).json()
            found[:] = [i for i in recent if i.get("title") == title and i.get("body") == body][:1]
            return bool(found)

        response = self._post_once(f"{_repo_path(repo)}/issues", payload, opened)
        return IssueView.from_api(response.json() if response is not None else found[0])

    def comment(self, repo: str, number: int, body: str) -> CommentView:
        """Comment once: a lost answer is resolved by finding the comment among the newest."""
        found: list[dict[str, Any]] = []

        started = datetime.now(timezone.utc).replace(microsecond=0)

        def posted() -> bool:
            recent = self._call("GET", f"{_repo_path(repo)}/issues/{int(number)}/comments",
                                params={"since": iso(started), "per_page": 100}).json()
            found[:] = [c for c in recent if c.get("body") == body][-1:]
            return bool(found)

        response = self._post_once(f"{_repo_path(repo)}/issues/{int(number)}/comments", {"body": body}, posted)
        return CommentView.from_api(response.json() if response is not None else found[0])

    def close_issue(self, repo: str, number: int, reason: str = "completed") -> IssueView:
        return IssueView.from_api(self._call("PATCH", f"{_repo_path(repo)}/issues/{int(number)}",
                                             json={"state": "closed", "state_reason": reason}).json())

    def update_issue(self, repo: str, number: int, *, title: str | None = None, body: str | None = None,
                     labels: list[str] | None = None) -> IssueView:
        """Rewrite an issue's title, body or labels in place (PATCH; labels replace the set)."""
        payload = {k: v for k, v in (("title", title), ("body", body), ("labels", labels)) if v is not None}
        return IssueView.from_api(self._call("PATCH", f"{_repo_path(repo)}/issues/{int(number)}", json=payload).json())

    def get_issue(self, repo: str, number: int) -> IssueView:
        return IssueView.from_api(self._call("GET", f"{_repo_path(repo)}/issues/{int(number)}").json())

    def list_comments(self, repo: str, number: int) -> list[CommentView]:
        return [CommentView.from_api(c)
                for c in self._call("GET", f"{_repo_path(repo)}/issues/{int(number)}/comments").json()]
