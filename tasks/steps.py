"""How the project declares a Prefect task, and the one place a task may run without Prefect.

`@step("name")` is `prefect.task` with the project's rule that no result is cached (every call
reads or changes the present). In a flow run each step is a task run, as always. The unit tier
(`make unit`, no services) runs the lifecycle and the approval gate inside `inline_steps()`:
each step's function is called directly in the calling thread, because a Prefect task run
needs a Prefect API to report to. Production code never enters `inline_steps()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Generic, TypeVar

from prefect import Task, get_run_logger
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.utilities.annotations import quote

from incidents.redaction import RedactingFilter
from tasks.context import RunContext

R = TypeVar("R")

_INLINE: ContextVar[bool] = ContextVar("runbooks_inline_steps", default=False)
_FALLBACK = logging.getLogger("runbooks")


class Done(Generic[R]):
    """What `submit` gives back inline: the call has run; `result()` returns or raises as a
    Prefect future would."""

    def __init__(self, call: Callable[[], R]):
        self._value: Any = None
        self._error: BaseException | None = None
        try:
            self._value = call()
        except Exception as exc:  # noqa: BLE001 - raised again by result(), as a future does
            self._error = exc

    def wait(self, timeout: float | None = None) -> None:
        return None

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        if self._error is not None:
            raise self._error
        return self._value


def _quoted(value: Any) -> Any:
    """A run's context (its whole environment config) as Prefect's `quote`: Prefect walks every
    task argument looking for futures and states to resolve and record as inputs, and walking
    the config cost 7% of a run's CPU, more with many services. The task still receives the
    context itself (Prefect unwraps a quote before the call)."""
    return quote(value) if isinstance(value, RunContext) else value


class Step(Task):
    """A Prefect task that runs as a plain call inside `inline_steps()`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _INLINE.get():
            return self.fn(*args, **kwargs)
        return super().__call__(*map(_quoted, args), **{k: _quoted(v) for k, v in kwargs.items()})

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        if _INLINE.get():
            return Done(lambda: self.fn(*args, **kwargs))
        return super().submit(*map(_quoted, args), **{k: _quoted(v) for k, v in kwargs.items()})

    def map(self, *args: Any, **kwargs: Any) -> Any:
        if _INLINE.get():
            raise NotImplementedError(f"step {self.name}: map is not run inline; give the test its own diagnosis")
        return super().map(*args, **kwargs)


def step(name: str, **options: Any) -> Callable[[Callable[..., Any]], Step]:
    def declare(fn: Callable[..., Any]) -> Step:
        return Step(fn=fn, name=name, cache_policy=NO_CACHE, **options)

    return declare


def inline() -> bool:
    """Inside `inline_steps()`: there is no Prefect API, so nothing is reported to one (no
    artifact, no deployment run started); what reaches the incident's people still goes."""
    return _INLINE.get()


@contextmanager
def inline_steps() -> Iterator[None]:
    """Run every step as a plain call until the block ends (the unit tier only)."""
    token = _INLINE.set(True)
    try:
        yield
    finally:
        _INLINE.reset(token)


class _NoCompletedLine(logging.Filter):
    """Drops Prefect's "Finished in state Completed()" line of every task run: a run's log had
    one per step (15 of its 23 lines, each sent to the API and stored), and the step's own state
    on the run's page says the same. A step that fails or crashes is still logged (ERROR)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg == "Finished in state Completed()")


_REDACT = RedactingFilter()
for _name in ("prefect.flow_runs", "prefect.task_runs", "runbooks"):  # what runs log, redacted first
    logging.getLogger(_name).addFilter(_REDACT)
logging.getLogger("prefect.task_runs").addFilter(_NoCompletedLine())


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger (its lines show on the run's page); outside a run, the project's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return _FALLBACK
