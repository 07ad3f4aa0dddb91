"""Read-only calls side by side on daemon threads, which a process that is told to stop does
not wait for.

`concurrent.futures` joins its pool threads when the interpreter exits. A run's process that
got Cancel (SIGTERM) while a health probe hung on a service that does not answer therefore
lived on until the probe's timeout: up to 3.3 s after the Cancel under load (seen in CI), for a
process that was doing nothing but waiting. On daemon threads the process ends at once and the
reads are dropped. Only for reads: a call that changes something must never be given up halfway.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TypeVar

A = TypeVar("A")
R = TypeVar("R")


def submit_all(fn: Callable[[A], R], items: Iterable[A], max_parallel: int | None = None,
               name: str = "read") -> list[Future[R]]:
    """`fn(item)` for each item, at most `max_parallel` at a time, on daemon threads; a future
    each, in the items' order. Wait on them with `future.result(timeout=...)`."""
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
    return [future.result() for future in submit_all(fn, items, max_parallel, name)]
