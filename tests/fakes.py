"""In-memory stand-ins for what a run reaches, handed to RunContext through its wiring, so
the rules that read targets (re-checks, remedies) and a run's whole lifecycle (with
tests/fake_store.py) run in the unit tier with no services.
They hold state like the real thing and fail the way it does (a missing deployment raises
the client's own error); they are for tests only, never shipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn, Self

from integrations.cache import CacheHealth, validate_prefix
from integrations.errors import IntegrationError
from integrations.github_views import CommentView, CommitView, IssueView, RunView
from integrations.pagerduty import Action
from integrations.postgres import Connections, Replication, Session
from integrations.slack import Posted
from tasks.context import RunContext
from tests.fake_kubernetes import FakeKubernetes
from tests.fake_store import FakeStore


@dataclass
class FakePostgres:
    """A server's sessions, connections and replication as a test sets them; signal() checks
    each backend again as the real client does (same backend start, never a superuser's unless
    allowed) and ends the sessions it terminates."""

    sessions_now: list[Session] = field(default_factory=list)
    connections_now: Connections = field(default_factory=lambda: Connections(used=5, max_connections=100, reserved=3))
    replication_now: Replication = field(default_factory=lambda: Replication("primary"))
    ping_seconds: float = 0.002
    signalled: list[tuple[int, str]] = field(default_factory=list)  # (pid, terminate | cancel)

    def ping(self) -> float:
        return self.ping_seconds

    def sessions(self) -> list[Session]:
        return list(self.sessions_now)

    def connections(self) -> Connections:
        return self.connections_now

    def replication(self) -> Replication:
        return self.replication_now

    def signal(self, sessions: list[tuple[int, str]], how: str, allow_superuser: bool = False) -> dict[int, str]:
        if how not in ("terminate", "cancel"):
            raise ValueError(f"how must be terminate or cancel, got {how!r}")
        live = {s.pid: s for s in self.sessions_now}
        outcomes: dict[int, str] = {}
        for pid, started in sessions:
            now = live.get(pid)
            if now is None or now.backend_start != datetime.fromisoformat(started):
                outcomes[pid] = "gone (already ended)"
            elif now.superuser and not allow_superuser:
                outcomes[pid] = "refused: superuser session"
            else:
                self.signalled.append((pid, how))
                outcomes[pid] = f"{how}d"
                if how == "terminate":
                    self.sessions_now = [s for s in self.sessions_now if s.pid != pid]
        return outcomes


def session(pid: int, state: str, seconds: float, started: datetime, query_seconds: float | None = None) -> Session:
    return Session(pid=pid, role="sandbox_app", superuser=False, state=state, backend_start=started,
                   seconds_in_state=seconds, seconds_in_xact=seconds, seconds_in_query=query_seconds,
                   wait_event_type=None, blocked_by=(), query="LOCK orders")


class FakeCache:
    """A Redis database's keys; memory as a test sets it."""

    def __init__(self, used_memory: int = 1_000_000, maxmemory: int = 0) -> None:
        self.values: dict[str, str] = {}
        self.used_memory, self.maxmemory = used_memory, maxmemory
        self.where = "cache.test:6379/0"

    def __enter__(self) -> FakeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def health(self) -> CacheHealth:
        return CacheHealth(self.used_memory, self.maxmemory, connected_clients=1, evicted_keys=0, keys=len(self.values))

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> str | None:
        previous, self.values[key] = self.values.get(key), value
        return previous

    def count_prefix(self, prefix: str) -> int:
        return sum(key.startswith(validate_prefix(prefix)) for key in self.values)

    def delete_prefix(self, prefix: str, batch: int = 500) -> int:
        gone = [key for key in self.values if key.startswith(validate_prefix(prefix))]
        for key in gone:
            del self.values[key]
        return len(gone)

    def flushdb(self) -> None:
        self.values.clear()


@dataclass
class FakePrometheus:
    """Instant queries answered from what a test put in, by the query's exact text; a query
    nobody answered has no series, as Prometheus answers for a metric with no samples."""

    answers: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    def __enter__(self) -> FakePrometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        self.asked.append(promql)
        return list(self.answers.get(promql, []))


class _Client:
    """A client used as a context manager, that can be set to fail as an outage would."""

    name = "client"

    def __init__(self) -> None:
        self.down = False

    def __enter__(self) -> Self:
        if self.down:
            raise IntegrationError(self.name, "connection refused")
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class FakeGitHub(_Client):
    """Issues and their comments, as the REST API keeps them; workflow runs that end as
    `conclusion` says the moment they are dispatched; the commits a test puts in."""

    name = "GitHub"

    def __init__(self, conclusion: str = "success") -> None:
        super().__init__()
        self.issues: dict[int, dict[str, Any]] = {}
        self.runs: list[tuple[str, str, RunView]] = []  # (repo, workflow, run), oldest first
        self.commits: list[CommitView] = []
        self.conclusion = conclusion

    def workflow_runs(self, repo: str, *, since: datetime | None = None, workflow: str | None = None,
                      event: str | None = None, per_page: int = 20) -> list[RunView]:
        return [run for r, w, run in reversed(self.runs) if r == repo and workflow in (None, w)
                and event in (None, run.event)][:per_page]

    def find_dispatched_run(self, repo: str, workflow: str, dispatch_id: str, since: datetime) -> RunView | None:
        return next((r for r in self.workflow_runs(repo, workflow=workflow) if dispatch_id in (r.display_title or "")),
                    None)

    def dispatch_workflow(self, repo: str, workflow: str, ref: str, inputs: dict[str, str], dispatch_id: str, *,
                          confirm_seconds: float = 10.0) -> int:
        run = RunView(id=len(self.runs) + 1, name=workflow, display_title=f"{workflow} {dispatch_id}",
                      event="workflow_dispatch", status="completed", conclusion=self.conclusion,
                      html_url=f"https://github.example/{repo}/actions/runs/{len(self.runs) + 1}", inputs=inputs)
        self.runs.append((repo, workflow, run))
        return run.id

    def wait_for_run(self, repo: str, workflow: str, run_id: int, *, timeout: float = 300,
                     poll: float = 2.0) -> RunView:
        return next(run for r, _, run in self.runs if r == repo and run.id == run_id)

    def failed_job_logs(self, repo: str, run_id: int, tail_lines: int = 40) -> dict[str, str]:
        run = self.wait_for_run(repo, "", run_id)
        return {"rollback": "the workflow failed"} if run.conclusion == "failure" else {}

    def recent_commits(self, repo: str, *, since: datetime | None = None, per_page: int = 10) -> list[CommitView]:
        return self.commits[:per_page]

    def create_issue(self, repo: str, title: str, body: str, labels: list[str],
                     assignees: list[str] | None = None) -> IssueView:
        number = len(self.issues) + 1
        self.issues[number] = {"number": number, "title": title, "body": body, "labels": labels, "state": "open",
                               "comments": [], "html_url": f"https://github.example/{repo}/issues/{number}"}
        return self.get_issue(repo, number)

    def comment(self, repo: str, number: int, body: str) -> CommentView:
        self.issues[number]["comments"].append(body)
        return CommentView(len(self.issues[number]["comments"]), body)

    def close_issue(self, repo: str, number: int, reason: str = "completed") -> IssueView:
        self.issues[number]["state"] = "closed"
        return self.get_issue(repo, number)

    def get_issue(self, repo: str, number: int) -> IssueView:
        """As GitHub answers: labels as objects, read by the client into the view."""
        issue = self.issues[number]
        return IssueView.from_api({**issue, "labels": [{"name": label} for label in issue["labels"]]})

    def update_issue(self, repo: str, number: int, *, title: str | None = None, body: str | None = None,
                     labels: list[str] | None = None) -> IssueView:
        issue = self.issues[number]
        for key, value in (("title", title), ("body", body), ("labels", labels)):
            if value is not None:
                issue[key] = value
        return self.get_issue(repo, number)


class FakeSlackApp(_Client):
    """chat.postMessage and chat.update: every message, threaded or not, in order."""

    name = "Slack"

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, Any]] = []
        self.views: list[dict[str, Any]] = []

    def post(self, channel: str, text: str, blocks: list[dict[str, Any]] | None = None,
             thread_ts: str | None = None) -> Posted:
        ts = f"{1700000000 + len(self.messages)}.000100"
        self.messages.append({"channel": channel, "text": text, "blocks": blocks, "thread_ts": thread_ts, "ts": ts})
        return Posted(channel, ts)

    def update(self, channel: str, ts: str, text: str, blocks: list[dict[str, Any]] | None = None) -> None:
        next(m for m in self.messages if m["ts"] == ts)["text"] = text

    def open_view(self, trigger_id: str, view: dict[str, Any]) -> None:
        self.views.append(view)

    def headlines(self) -> list[str]:
        return [m["text"].splitlines()[0] for m in self.messages]


class FakePagerDuty(_Client):
    name = "PagerDuty"

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str]] = []  # (routing key, action)

    def send(self, routing_key: str, action: Action, dedup_key: str, *, summary: str | None = None,
             source: str | None = None, severity: str | None = None, details: dict[str, Any] | None = None,
             links: list[dict[str, str]] | None = None) -> str:
        self.events.append((routing_key, action))
        return dedup_key


@dataclass
class FakeWiring:
    """A run's wiring of fakes; a client the test did not give fails as unreachable would."""

    kube: FakeKubernetes = field(default_factory=FakeKubernetes)
    postgres_: FakePostgres = field(default_factory=FakePostgres)
    caches: dict[str, FakeCache] = field(default_factory=dict)  # by the secret naming its URL
    store_: FakeStore | None = None
    github_: FakeGitHub | None = None
    slack_: FakeSlackApp | None = None
    pagerduty_: FakePagerDuty | None = None
    prometheus_: FakePrometheus | None = None

    @classmethod
    def of_services(cls) -> FakeWiring:
        """The store, GitHub, Slack and PagerDuty a run's lifecycle reaches, all up."""
        return cls(store_=FakeStore(), github_=FakeGitHub(), slack_=FakeSlackApp(), pagerduty_=FakePagerDuty())

    def store(self) -> FakeStore:
        if self.store_ is None:
            raise IntegrationError("incident store", "not part of this test")
        return self.store_

    def github(self, ctx: RunContext) -> FakeGitHub:
        return self.github_ or self._absent(ctx)

    def slack_app(self, ctx: RunContext) -> FakeSlackApp:
        return self.slack_ or self._absent(ctx)

    def pagerduty(self, ctx: RunContext) -> FakePagerDuty:
        return self.pagerduty_ or self._absent(ctx)

    def kubernetes(self, ctx: RunContext) -> FakeKubernetes:
        return self.kube

    def postgres(self, ctx: RunContext) -> FakePostgres:
        return self.postgres_

    def prometheus(self, ctx: RunContext) -> FakePrometheus:
        return self.prometheus_ or self._absent(ctx)

    def cache(self, ctx: RunContext, url_secret: str) -> FakeCache:
        if url_secret not in self.caches:
            raise IntegrationError(f"Redis {url_secret}", "connection refused")
        return self.caches[url_secret]

    def _absent(self, ctx: RunContext, *args: Any) -> NoReturn:
        raise IntegrationError("client", "not part of this test")

    slack = _absent


def context(wiring: FakeWiring, service: str = "api") -> RunContext:
    return RunContext.load("sandbox", service, wiring)


def ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)
