"""Read-only calls side by side on daemon threads, which a process that is told to stop does
not wait for; and waits for them that end at once when it is told to stop.

`concurrent.futures` joins its pool threads when the interpreter exits. A run's process that
got Cancel (SIGTERM) while a health probe hung on a service that does not answer therefore
lived on until the probe's timeout, doing nothing but waiting (tests/test_probes_unit.py: 30 s
probes, gone 32 s after the SIGTERM; now under 2 s). On daemon threads the process ends at once
and the reads are dropped. Only for reads: a call that changes something must never be given
up halfway.

A wait on another thread does not end with the process's main thread: Prefect joins its task
threads when a run's process stops, and a check waiting on its probes kept the process for as
long as they took (`make up`, api hanging, 5 s probes, Cancel 1 s into the run, during the
checks: gone about 2.8 s after the Cancel reached the API; now about 0.6 s). Waits made with
`result` end with `Stopping` once `stop_waiting` was called: a run's process calls it when it
is told to stop (tasks/diagnosis.py `gather`).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, InvalidStateError, wait
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from incidents.errors import RunbookError

A = TypeVar("A")
R = TypeVar("R")

_STOPPING: Future[None] = Future()  # done once the process is being stopped


class Stopping(RunbookError):
    """The wait was given up: the process is being stopped."""


def stop_waiting() -> None:
    """The process is being stopped (a Cancel): every wait made with `result`, on any thread,
    ends now with `Stopping`, and so do later ones. For a run's own process only."""
    with contextlib.suppress(InvalidStateError):  # stopped already
        _STOPPING.set_result(None)


def result(future: Future[R], timeout: float | None = None) -> R:
    """`future.result(timeout)`, ended early with `Stopping` once `stop_waiting` was called."""
    if not future.done():
        either: list[Future[object]] = [future, _STOPPING]  # type: ignore[list-item]  # waited on, not read
        wait(either, timeout=timeout, return_when=FIRST_COMPLETED)
    if future.done():
        return future.result()
    if _STOPPING.done():
        raise Stopping("not waited for: the run is being stopped")
    raise FutureTimeout()


def submit_all(fn: Callable[[A], R], items: Iterable[A], max_parallel: int | None = None,
               name: str = "read") -> list[Future[R]]:
    """`fn(item)` for each item, at most `max_parallel` at a time, on daemon threads; a future
    each, in the items' order. Wait on them with `result(future, timeout)`."""
    work: queue.SimpleQueue[tuple[A, Future[R]]] = queue.SimpleQueue()
    futures: list[Future[R]] = []
    for item in items:
        future: Future[R] = Future()
        futures.append(future)
        work.put((item, future))

    def drain() -> None:
        while True:
            try:
                item, future = work.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(item))
            except BaseException as exc:  # noqa: BLE001 - the caller's result() raises it
                future.set_exception(exc)

    for index in range(min(max_parallel or len(futures), len(futures))):
        threading.Thread(target=drain, name=f"{name}-{index}", daemon=True).start()
    return futures


def map_all(fn: Callable[[A], R], items: Iterable[A], max_parallel: int | None = None,
            name: str = "read") -> list[R]:
    """As `ThreadPoolExecutor.map`, on daemon threads: the results in order, or the first error."""
    return [result(future) for future in submit_all(fn, items, max_parallel, name)]
