"""How the warm worker (deployments/warm_worker.py) starts a run's process: forked from a fork
server that has Prefect and every flow imported already, then running exactly what
`python -m prefect.engine` runs, in the run's own environment and directory.

The fork server is Python's `multiprocessing` forkserver: one single-threaded process, started
once by the worker, that imports `deployments.warm_preload` and forks a child per run (a fork
copies only the thread that forks, so forking the worker itself, which runs threads and an
event loop, would not be safe)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import prefect.engine

from deployments.prefect_private import ProcessHandle

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from deployments.prefect_private import ControlChannel

PRELOAD = "deployments.warm_preload"
# A Cancel ends the run's process at once (the engine exits on SIGTERM once it has the cancel
# intent); one that ignores SIGTERM is killed after this long.
KILL_AFTER_SECONDS = 5.0

_context = multiprocessing.get_context("forkserver")
# what the fork server's environment passes on to a run whose own environment does not say:
# where the run's metrics files go (deployments/worker_metrics.py)
_KEPT = ("PROMETHEUS_MULTIPROC_DIR",)


def start_fork_server(preload: str = PRELOAD) -> None:
    """Start the fork server now, so that the first run does not wait for its imports."""
    _context.set_forkserver_preload([preload])
    multiprocessing.forkserver.ensure_running()


def run_engine(env: Mapping[str, str], cwd: str) -> None:
    """In the forked child: the run's environment and directory, then `python -m prefect.engine`.

    Settings are read again from the run's environment, so a deployment's `job_variables.env`
    (PREFECT_* included) applies as it would to a new interpreter; logging is configured
    again only when the run's PREFECT_LOGGING_* differ from the fork server's (it costs
    ~0.2 s); settings, only when PREFECT_* differ."""
    settings_changed = _settings(os.environ) != _settings(env)
    logging_changed = _settings(os.environ, "PREFECT_LOGGING_") != _settings(env, "PREFECT_LOGGING_")
    kept = {key: os.environ[key] for key in _KEPT if key in os.environ}
    os.environ.clear()
    os.environ.update({**kept, **env})
    os.chdir(cwd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    if settings_changed:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    if logging_changed:
        from prefect.logging.configuration import setup_logging

        setup_logging(incremental=False)
    from deployments import log_format

    log_format.apply("run")
    sys.argv = ["prefect.engine"]
    runpy.run_path(prefect.engine.__file__, run_name="__main__")  # the module as `python -m` runs it


def _settings(env: Mapping[str, str], prefix: str = "PREFECT_") -> dict[str, str]:
    """Prefect's settings in an environment (PREFECT__* are a run's own bookkeeping, not settings)."""
    return {key: value for key, value in env.items() if key.startswith(prefix) and not key.startswith("PREFECT__")}


class _Termination:
    """How a run's process is stopped: SIGTERM now and, if it is still there after
    KILL_AFTER_SECONDS, SIGKILL. Prefect's default waits and polls every 3 s before it records
    Cancelled; here the Cancel is recorded as soon as the signal is sent."""

    wait_after_graceful_kill = False

    def is_alive(self, pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def graceful_kill(self, pid: int) -> None:
        os.kill(pid, signal.SIGTERM)
        timer = threading.Timer(KILL_AFTER_SECONDS, self.hard_kill_if_alive, args=(pid,))
        timer.daemon = True
        timer.start()

    def hard_kill_if_alive(self, pid: int) -> None:
        if self.is_alive(pid):
            self.hard_kill(pid)

    def hard_kill(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        pass


class ForkedEngineStarter:
    """A ProcessStarter (prefect.runner._flow_run_executor) that forks the run's process from
    the fork server instead of starting a new interpreter."""

    def __init__(self, env: Mapping[str, str | None], cwd: Path, control_channel: ControlChannel | None):
        self._env = {key: value for key, value in env.items() if value is not None}
        self._cwd = cwd
        self._control_channel = control_channel

    async def start(self, flow_run: FlowRun,
                    task_status: anyio.abc.TaskStatus[ProcessHandle] = anyio.TASK_STATUS_IGNORED) -> None:
        env = {**self._env, "PREFECT__FLOW_RUN_ID": str(flow_run.id),
               # the worker runs on_cancellation / on_crashed hooks and records Cancelled (as Prefect's runner does)
               "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false"}
        registered = False
        if self._control_channel is not None:
            try:
                port, token = self._control_channel.register(flow_run.id)
                env.update(PREFECT__CONTROL_PORT=str(port), PREFECT__CONTROL_TOKEN=token)
                registered = True
            except RuntimeError:  # no loopback listener: Cancel falls back to a plain kill
                pass
        process = _context.Process(target=run_engine, args=(env, str(self._cwd)), name=f"flow-run-{flow_run.name}")
        try:
            await anyio.to_thread.run_sync(process.start)
        except BaseException:
            if registered and self._control_channel is not None:
                self._control_channel.unregister(flow_run.id)
            raise
        # Prefect's handle reads pid, exitcode and liveness, which every multiprocessing process has;
        # its annotation names only the spawn and plain kinds.
        task_status.started(ProcessHandle(process, termination_scope=_Termination()))  # type: ignore[arg-type]
        await anyio.wait_readable(process.sentinel)  # no thread per run: 50 runs need no 50 threads
        process.join()
