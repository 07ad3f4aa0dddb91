"""A GitHub REST subset: issues, comments, labels, commits, Actions runs, jobs, logs and
workflow dispatch. A dispatched workflow runs on a thread through the `runner` it was given."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sandbox.cluster import now_iso
from sandbox.http import Request, Response, Router

# A workflow runner gets (repo, inputs) and returns (succeeded, log lines).
Runner = Callable[[str, dict], tuple[bool, list[str]]]


@dataclass
class Repo:
    full_name: str
    issues: list[dict] = field(default_factory=list)
    comments: dict[int, list[dict]] = field(default_factory=dict)
    labels: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)
    workflows: dict[str, int] = field(default_factory=dict)
    runs: list[dict] = field(default_factory=list)


class GitHub:
    def __init__(self, token: str, prefix: str = "/github"):
        self.token = token
        self.prefix = prefix
        self.repos: dict[str, Repo] = {}
        self.runners: dict[tuple[str, str], Runner] = {}
        self.jobs: dict[int, dict] = {}
        self.job_logs: dict[int, str] = {}
        self.lock = threading.RLock()
        self._ids = itertools.count(1000)
        # GitHub answers a dispatch with the run it created when asked (return_run_details);
        # False: an older Enterprise Server, which refuses the parameter (422 naming it)
        self.run_details = True
        # called with each dispatched run before the dispatch is answered (a test's stand-in for
        # another operator who dispatches the same workflow at that moment)
        self.on_dispatch: Callable[[str, str], None] | None = None
        self.run_delay = 0.3
        self.router = Router()
        r, p = self.router, prefix
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}", self._get_repo)
        r.add("POST", f"{p}/repos/{{owner}}/{{repo}}/issues", self._create_issue)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/issues", self._list_issues)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/issues/{{number}}", self._get_issue)
        r.add("PATCH", f"{p}/repos/{{owner}}/{{repo}}/issues/{{number}}", self._update_issue)
        r.add("POST", f"{p}/repos/{{owner}}/{{repo}}/issues/{{number}}/comments", self._add_comment)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/issues/{{number}}/comments", self._list_comments)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/labels", self._list_labels)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/commits", self._list_commits)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/actions/runs", self._list_runs)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/actions/workflows/{{workflow}}/runs", self._list_runs)
        r.add("POST", f"{p}/repos/{{owner}}/{{repo}}/actions/workflows/{{workflow}}/dispatches", self._dispatch)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/actions/runs/{{run_id}}", self._get_run)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/actions/runs/{{run_id}}/jobs", self._list_jobs)
        r.add("GET", f"{p}/repos/{{owner}}/{{repo}}/actions/jobs/{{job_id}}/logs", self._job_logs_redirect)
        r.add("GET", "/_blobs/job-logs/{job_id}", self._job_logs_blob)

    # -- world set-up used by the sandbox -------------------------------------------------
    def repo(self, full_name: str) -> Repo:
        with self.lock:
            return self.repos.setdefault(full_name, Repo(full_name))

    def add_workflow(self, full_name: str, workflow: str, runner: Runner | None = None) -> None:
        repo = self.repo(full_name)
        repo.workflows.setdefault(workflow, next(self._ids))
        if runner:
            self.runners[(full_name, workflow)] = runner

    def add_commit(self, full_name: str, message: str, at: float | None = None) -> str:
        repo = self.repo(full_name)
        sha = hashlib.sha1(f"{full_name}{message}{time.time()}{len(repo.commits)}".encode()).hexdigest()
        stamp = now_iso(at)
        repo.commits.insert(0, {"sha": sha, "commit": {"message": message,
                                                       "author": {"name": "sandbox-dev", "date": stamp},
                                                       "committer": {"name": "sandbox-dev", "date": stamp}},
                                "html_url": f"https://github.example/{full_name}/commit/{sha}"})
        return sha

    def record_run(self, full_name: str, workflow: str, title: str, conclusion: str | None, event: str = "push",
                   at: float | None = None, inputs: dict | None = None, log: list[str] | None = None) -> dict:
        repo = self.repo(full_name)
        self.add_workflow(full_name, workflow)
        with self.lock:
            run_id, job_id = next(self._ids), next(self._ids)
            stamp = now_iso(at)
            run = {"id": run_id, "name": workflow.rsplit(".", 1)[0], "display_title": title,
                   "path": f".github/workflows/{workflow}", "workflow_id": repo.workflows[workflow], "event": event,
                   "status": "completed" if conclusion else "queued", "conclusion": conclusion,
                   "head_branch": "main", "head_sha": repo.commits[0]["sha"] if repo.commits else "0" * 40,
                   "created_at": stamp, "updated_at": stamp, "run_started_at": stamp, "run_attempt": 1,
                   "html_url": f"https://github.example/{full_name}/actions/runs/{run_id}", "inputs": inputs or {}}
            repo.runs.insert(0, run)
            self.jobs[job_id] = {
                "id": job_id,
                "run_id": run_id,
                "name": run["name"],
                "status": run["status"],
                "conclusion": conclusion,
                "started_at": stamp,
                "completed_at": stamp if conclusion else None,
                "steps": [{"name": "Run", "number": 1, "status": run["status"], "conclusion": conclusion}],
            }
            self.job_logs[job_id] = "".join(f"{stamp} {line}\n" for line in (log or [f"{title}: {conclusion}"]))
            return run

    # -- HTTP -----------------------------------------------------------------------------
    def handle(self, req: Request) -> Response | None:
        if not req.path.startswith((self.prefix + "/", "/_blobs/")):
            return None
        if req.path.startswith(self.prefix + "/"):
            auth = req.header("authorization")
            if auth not in (f"Bearer {self.token}", f"token {self.token}"):
                return Response.json({"message": "Bad credentials", "status": "401"}, 401)
        with self.lock:
            resp = self.router.dispatch(req)
        return resp or Response.json({"message": "Not Found", "status": "404"}, 404)

    def _find_repo(self, owner: str, repo: str) -> Repo:
        found = self.repos.get(f"{owner}/{repo}")
        if found is None:
            raise LookupError
        return found

    def _get_repo(self, req: Request, owner: str, repo: str) -> Response:
        if f"{owner}/{repo}" not in self.repos:
            return _not_found()
        return Response.json({"full_name": f"{owner}/{repo}", "default_branch": "main"})

    def _issue(self, owner: str, repo: str, number: str) -> dict | None:
        r = self.repos.get(f"{owner}/{repo}")
        return next((i for i in r.issues if str(i["number"]) == number), None) if r else None

    def _create_issue(self, req: Request, owner: str, repo: str) -> Response:
        r = self.repos.get(f"{owner}/{repo}")
        if r is None:
            return _not_found()
        data = req.json() or {}
        if not isinstance(data, dict) or not str(data.get("title") or "").strip():
            return Response.json(
                {"message": "Validation Failed", "errors": [{"field": "title", "code": "missing_field"}]}, 422
            )
        labels = [str(label) for label in data.get("labels") or []]
        r.labels.update(labels)
        number = len(r.issues) + 1
        issue = {"number": number, "id": next(self._ids), "title": data["title"], "body": data.get("body") or "",
                 "state": "open", "state_reason": None, "labels": [{"name": label} for label in labels],
                 "assignees": [{"login": a} for a in data.get("assignees") or []],
                 "html_url": f"https://github.example/{owner}/{repo}/issues/{number}",
                 "created_at": now_iso(), "updated_at": now_iso(), "closed_at": None, "comments": 0}
        r.issues.append(issue)
        return Response.json(issue, 201)

    def _list_issues(self, req: Request, owner: str, repo: str) -> Response:
        r = self.repos.get(f"{owner}/{repo}")
        if r is None:
            return _not_found()
        state = req.query.get("state", "open")
        wanted = {label for label in req.query.get("labels", "").split(",") if label}
        found = [i for i in reversed(r.issues) if (state == "all" or i["state"] == state)
                 and wanted <= {label["name"] for label in i["labels"]}]
        return Response.json(found[: int(req.query.get("per_page", 30))])

    def _get_issue(self, req: Request, owner: str, repo: str, number: str) -> Response:
        issue = self._issue(owner, repo, number)
        return Response.json(issue) if issue else _not_found()

    def _update_issue(self, req: Request, owner: str, repo: str, number: str) -> Response:
        issue = self._issue(owner, repo, number)
        if issue is None:
            return _not_found()
        data = req.json() or {}
        if data.get("state") not in (None, "open", "closed"):
            return Response.json(
                {"message": "Validation Failed", "errors": [{"field": "state", "code": "invalid"}]}, 422
            )
        for key in ("title", "body", "state", "state_reason"):
            if key in data:
                issue[key] = data[key]
        if "labels" in data:
            issue["labels"] = [{"name": label} for label in data["labels"]]
        issue["closed_at"] = now_iso() if issue["state"] == "closed" else None
        issue["updated_at"] = now_iso()
        return Response.json(issue)

    def _add_comment(self, req: Request, owner: str, repo: str, number: str) -> Response:
        issue = self._issue(owner, repo, number)
        if issue is None:
            return _not_found()
        body = (req.json() or {}).get("body")
        if not body:
            return Response.json(
                {"message": "Validation Failed", "errors": [{"field": "body", "code": "missing_field"}]}, 422
            )
        comment = {"id": next(self._ids), "body": body, "created_at": now_iso(),
                   "html_url": f"{issue['html_url']}#issuecomment-{len(self._comments(owner, repo, issue))}"}
        self._comments(owner, repo, issue).append(comment)
        issue["comments"] += 1
        return Response.json(comment, 201)

    def _comments(self, owner: str, repo: str, issue: dict) -> list[dict]:
        return self.repos[f"{owner}/{repo}"].comments.setdefault(issue["number"], [])

    def _list_comments(self, req: Request, owner: str, repo: str, number: str) -> Response:
        issue = self._issue(owner, repo, number)
        return Response.json(self._comments(owner, repo, issue)) if issue else _not_found()

    def _list_labels(self, req: Request, owner: str, repo: str) -> Response:
        r = self.repos.get(f"{owner}/{repo}")
        return Response.json([{"name": label} for label in sorted(r.labels)]) if r else _not_found()

    def _list_commits(self, req: Request, owner: str, repo: str) -> Response:
        r = self.repos.get(f"{owner}/{repo}")
        if r is None:
            return _not_found()
        since = req.query.get("since")
        found = [c for c in r.commits if not since or c["commit"]["committer"]["date"] >= since]
        return Response.json(found[: int(req.query.get("per_page", 30))])

    def _list_runs(self, req: Request, owner: str, repo: str, workflow: str | None = None) -> Response:
        r = self.repos.get(f"{owner}/{repo}")
        if r is None or (workflow and workflow not in r.workflows and workflow not in map(str, r.workflows.values())):
            return _not_found()
        runs = r.runs
        if workflow:
            wf_id = r.workflows.get(workflow) or int(workflow)
            runs = [x for x in runs if x["workflow_id"] == wf_id]
        if req.query.get("event"):
            runs = [x for x in runs if x["event"] == req.query["event"]]
        if req.query.get("status"):
            runs = [x for x in runs if req.query["status"] in (x["status"], x["conclusion"])]
        created = req.query.get("created", "")
        if created.startswith(">="):
            runs = [x for x in runs if x["created_at"] >= created[2:]]
        per_page = int(req.query.get("per_page", 30))
        return Response.json({"total_count": len(runs), "workflow_runs": runs[:per_page]})

    def _get_run(self, req: Request, owner: str, repo: str, run_id: str) -> Response:
        r = self.repos.get(f"{owner}/{repo}")
        run = next((x for x in r.runs if str(x["id"]) == run_id), None) if r else None
        return Response.json(run) if run else _not_found()

    def _list_jobs(self, req: Request, owner: str, repo: str, run_id: str) -> Response:
        jobs = [j for j in self.jobs.values() if str(j["run_id"]) == run_id]
        return Response.json({"total_count": len(jobs), "jobs": jobs})

    def _job_logs_redirect(self, req: Request, owner: str, repo: str, job_id: str) -> Response:
        if int(job_id) not in self.job_logs:
            return _not_found()
        return Response(302, b"", {"Location": f"{req.base_url}/_blobs/job-logs/{job_id}?sig=sandbox"})

    def _job_logs_blob(self, req: Request, job_id: str) -> Response:
        log = self.job_logs.get(int(job_id))
        return Response.text(log) if log is not None else Response.text("BlobNotFound", 404)

    def _dispatch(self, req: Request, owner: str, repo: str, workflow: str) -> Response:
        full = f"{owner}/{repo}"
        r = self.repos.get(full)
        if r is None or workflow not in r.workflows:
            return _not_found()
        data = req.json() or {}
        if not data.get("ref"):
            return Response.json({"message": "Invalid request.\n\n\"ref\" wasn't supplied."}, 422)
        if "return_run_details" in data and not self.run_details:  # an older GitHub Enterprise Server
            return Response.json({"message": "Invalid request.\n\n\"return_run_details\" is not a permitted key.",
                                  "documentation_url": "https://docs.github.com/rest/actions/workflows"}, 422)
        inputs = {str(k): str(v) for k, v in (data.get("inputs") or {}).items()}
        # the workflow's run-name: `<name> (<environment>) <dispatch_id>`, as the rollback workflow declares it
        title = f"{workflow.rsplit('.', 1)[0]} ({inputs.get('environment', 'default')}) {inputs.get('dispatch_id', '')}"
        run = self.record_run(full, workflow, title.strip(), None, event="workflow_dispatch", inputs=inputs)
        runner = self.runners.get((full, workflow))
        threading.Thread(target=self._execute, args=(full, run, runner, inputs), daemon=True).start()
        if self.on_dispatch is not None:
            self.on_dispatch(full, workflow)
        if data.get("return_run_details") is True:  # GitHub since 2026-02-19: the run it created
            return Response.json({"workflow_run_id": run["id"], "html_url": run["html_url"],
                                  "run_url": f"{self.prefix}/repos/{full}/actions/runs/{run['id']}"}, 200)
        return Response(204)

    def _execute(self, full: str, run: dict, runner: Runner | None, inputs: dict) -> None:
        time.sleep(self.run_delay)
        job = next(j for j in self.jobs.values() if j["run_id"] == run["id"])
        with self.lock:
            run["status"] = job["status"] = "in_progress"
            run["updated_at"] = now_iso()
        try:
            ok, lines = runner(full, inputs) if runner else (True, ["nothing to do"])
        except Exception as exc:  # noqa: BLE001 - the workflow failed; its log says why, as on GitHub
            ok, lines = False, [f"Error: {exc}"]
        time.sleep(self.run_delay)
        with self.lock:
            conclusion = "success" if ok else "failure"
            run.update(status="completed", conclusion=conclusion, updated_at=now_iso())
            job.update(status="completed", conclusion=conclusion, completed_at=now_iso(),
                       steps=[{"name": "Rollback", "number": 1, "status": "completed", "conclusion": conclusion}])
            self.job_logs[job["id"]] = "".join(f"{now_iso()} {line}\n" for line in lines)


def _not_found() -> Response:
    return Response.json({"message": "Not Found", "status": "404"}, 404)
