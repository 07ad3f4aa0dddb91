"""Typed views of what the project reads from GitHub's REST answers: an issue, a workflow run,
its jobs, a commit, a comment. The client reads the JSON once and hands out these; a field
GitHub leaves out (or null) reads as None or empty here, once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class IssueView:
    number: int
    html_url: str
    state: str  # open | closed
    title: str = ""
    body: str | None = None
    labels: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> IssueView:
        labels = tuple(str(label.get("name") if isinstance(label, Mapping) else label)
                       for label in obj.get("labels") or [])
        return cls(number=int(obj["number"]), html_url=str(obj.get("html_url") or ""),
                   state=str(obj.get("state") or "open"), title=str(obj.get("title") or ""),
                   body=_text(obj.get("body")), labels=labels)


@dataclass(frozen=True)
class RunView:
    """A workflow run: `display_title` is its run-name (ours shows the dispatch id)."""

    id: int
    name: str | None = None  # the workflow's name
    display_title: str | None = None
    event: str | None = None
    status: str | None = None  # queued | in_progress | completed
    conclusion: str | None = None  # success | failure | cancelled | ... once completed
    created_at: str | None = None
    html_url: str | None = None
    inputs: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> RunView:
        return cls(id=int(obj["id"]), name=_text(obj.get("name")), display_title=_text(obj.get("display_title")),
                   event=_text(obj.get("event")), status=_text(obj.get("status")),
                   conclusion=_text(obj.get("conclusion")), created_at=_text(obj.get("created_at")),
                   html_url=_text(obj.get("html_url")), inputs=dict(obj.get("inputs") or {}))


@dataclass(frozen=True)
class JobView:
    id: int
    name: str
    conclusion: str | None = None

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> JobView:
        return cls(id=int(obj["id"]), name=str(obj.get("name") or ""), conclusion=_text(obj.get("conclusion")))


@dataclass(frozen=True)
class CommitView:
    sha: str
    message: str
    committed_at: str | None = None
    author: str | None = None

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> CommitView:
        commit = obj.get("commit") or {}
        committer, author = commit.get("committer") or {}, commit.get("author") or {}
        return cls(sha=str(obj.get("sha") or ""), message=str(commit.get("message") or ""),
                   committed_at=_text(committer.get("date") or author.get("date")), author=_text(author.get("name")))

    @property
    def headline(self) -> str:
        return self.message.splitlines()[0] if self.message else ""


@dataclass(frozen=True)
class CommentView:
    id: int | None
    body: str

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> CommentView:
        return cls(id=int(obj["id"]) if obj.get("id") is not None else None, body=str(obj.get("body") or ""))
