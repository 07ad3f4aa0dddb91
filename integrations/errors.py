"""The errors integrations raise: each names what was called and why it failed, and its type
says how it failed (no answer, no answer in time, an answer that refused), so a caller
chooses what to do by type, never by text."""

from __future__ import annotations

from typing import Self

from incidents.errors import RunbookError


class IntegrationError(RunbookError):
    """A call to something outside failed. Catch a subclass to handle one way of failing:
    Unreachable (TimedOut), Refused (NotFound, Conflict); this base class when any will do.
    `what` names the call (e.g. "GitHub POST /repos/acme/api/issues"); `reason` says why it failed."""

    def __init__(self, what: str, reason: str, *, status: int | None = None, transient: bool = False):
        super().__init__(f"{what} failed: {reason}")
        self.what = what
        self.reason = reason
        self.status = status
        self.transient = transient


class Unreachable(IntegrationError):
    """No answer: the connection was refused or reset, the name did not resolve."""


class TimedOut(Unreachable):
    """No answer in time (a read or connect timeout, a statement timeout, a wait that ran out)."""


class Refused(IntegrationError):
    """It answered, and said no: an error status (`status`), or an API's own refusal."""


class NotFound(Refused):
    """It answered that what was asked for does not exist (HTTP 404)."""


class Conflict(Refused):
    """It answered that the request conflicts with the current state (HTTP 409)."""


def refusal(what: str, reason: str, status: int | None, *, transient: bool = False) -> Refused:
    """The error for an answer with `status`: NotFound for 404, Conflict for 409, else Refused."""
    kind = {404: NotFound, 409: Conflict}.get(status or 0, Refused)
    return kind(what, reason, status=status, transient=transient)


def no_answer(what: str, reason: str, *, timed_out: bool = False) -> Unreachable:
    return (TimedOut if timed_out else Unreachable)(what, reason, transient=True)


def gave_up(what: str, reason: str, status: int | None, *, timed_out: bool = False) -> IntegrationError:
    """The error after the last attempt of a retried call: the last answer's refusal, or no answer."""
    if status is not None:
        return refusal(what, reason, status, transient=True)
    return no_answer(what, reason, timed_out=timed_out)


class Closing:
    """`with Client(...) as client:` closes the client's connections on the way out."""

    def close(self) -> None:  # pragma: no cover - every client defines its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
