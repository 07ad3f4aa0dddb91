"""The `runbooks-warm` worker type: Prefect's process worker, with each run's process forked
from a fork server that has Prefect and every flow imported already.

Why: a process worker starts each run as `python -m prefect.engine`, a new interpreter that
spends ~3 s importing Prefect and the flows before the first step, and polls every 10 s. This
worker keeps everything else of Prefect's: it claims runs through the worker API (so work-pool
and work-queue pause and the pool, queue and deployment concurrency limits hold), applies the
deployment's `job_variables` (`env`, `working_dir`), heartbeats and shows in the UI under the
pool's Workers, and tracks each run's process with Prefect's own executor (control channel,
Cancel -> kill -> on_cancellation hooks -> Cancelled, a process that dies without an end ->
Crashed). Only how the process starts differs: `multiprocessing`'s fork server (a
single-threaded process, started once, that imports `deployments.warm_preload`) forks a child
that runs exactly what `python -m prefect.engine` runs.

Start it with `prefect worker start --pool incident-response --type runbooks-warm` (registered
through the `prefect.collections` entry point in pyproject.toml).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import sys
import tempfile
import threading
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
import prefect.engine
from prefect.client.schemas.objects import StateType
from prefect.flows import load_flow_from_flow_run
from prefect.runner._flow_run_executor import FlowRunExecutionResult, FlowRunExecutorContext
from prefect.runner._hook_runner import HookRunner
from prefect.runner._process_manager import ProcessHandle
from prefect.states import Crashed
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun
    from prefect.runner._control_channel import ControlChannel

PRELOAD = "deployments.warm_preload"
WORKER_TYPE = "runbooks-warm"
# A Cancel ends the run's process at once (the engine exits on SIGTERM once it has the cancel
# intent); one that ignores SIGTERM is killed after this long.
KILL_AFTER_SECONDS = 5.0
# How long a suspended attempt's process may take to exit before the resumed attempt kills it.
PREVIOUS_ATTEMPT_SECONDS = 10.0
# While the Prefect API is unreachable the worker keeps polling, at most this far apart.
OUTAGE_POLL_SECONDS = 2.0

_context = multiprocessing.get_context("forkserver")
_log = logging.getLogger("runbooks.warm_worker")


def start_fork_server(preload: str = PRELOAD) -> None:
    """Start the fork server now, so that the first run does not wait for its imports."""
    _context.set_forkserver_preload([preload])
    multiprocessing.forkserver.ensure_running()


def run_engine(env: Mapping[str, str], cwd: str) -> None:
    """In the forked child: the run's environment and directory, then `python -m prefect.engine`.

    Settings and logging are read again from the run's environment, so a deployment's
    `job_variables.env` (PREFECT_* included) applies as it would to a new interpreter."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)
    sys.argv = ["prefect.engine"]
    runpy.run_path(prefect.engine.__file__, run_name="__main__")  # the module as `python -m` runs it


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
        task_status.started(ProcessHandle(process, termination_scope=_Termination()))
        await anyio.wait_readable(process.sentinel)  # no thread per run: 50 runs need no 50 threads
        process.join()


class WarmWorker(ProcessWorker):
    type = WORKER_TYPE
    job_configuration = ProcessJobConfiguration
    _description = ("Prefect's process worker with each run forked from a warm fork server (Prefect and the flows "
                    "imported once): the first step of a run starts in well under a second.")
    _display_name = "Process (warm fork server)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._executor: FlowRunExecutorContext | None = None
        self._api_down_since: float | None = None
        self._hooks = HookRunner(resolve_flow=load_flow_from_flow_run)

    async def setup(self) -> None:
        await anyio.to_thread.run_sync(start_fork_server)
        # One executor context for every run, as Prefect's Runner has: one client, one control
        # channel and one cancellation observer instead of a websocket pair per run.
        self._executor = await self._exit_stack.enter_async_context(FlowRunExecutorContext())
        await super().setup()

    async def run(self, flow_run: FlowRun, configuration: ProcessJobConfiguration,
                  task_status: anyio.abc.TaskStatus[int] | None = None) -> ProcessWorkerResult:
        assert self._executor is not None, "the worker is not set up"
        await self._previous_attempt_ended(flow_run)
        with ExitStack() as stack:
            cwd = configuration.working_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(suffix="prefect")))
            starter = ForkedEngineStarter(configuration.env, Path(cwd), self._executor.control_channel)
            executor = self._executor.create_executor(flow_run, starter, hook_runner=self._hooks,
                                                      propose_submitting=False)
            execution = await self._execute(executor, task_status)
        if execution is None:  # cancelled before it started, or the server refused it: nothing ran
            if task_status is not None:
                task_status.started(0)
            return ProcessWorkerResult(status_code=0, identifier="")
        if execution.crash_unreported:
            self._runs_task_group.start_soon(self._report_crash_when_reachable, flow_run, execution.status_code)
        return ProcessWorkerResult(status_code=execution.status_code or 0, identifier=str(execution.handle.pid))

    async def _previous_attempt_ended(self, flow_run: FlowRun) -> None:
        """A resumed run can be handed out again while the process that suspended it is still
        exiting. Prefect's executor tracks processes and control sessions by flow run id, so
        the old attempt must be gone before the new one starts (or its clean-up would drop the
        new one's registration and Cancel would find no process)."""
        processes = self._executor.process_manager
        deadline = anyio.current_time() + PREVIOUS_ATTEMPT_SECONDS
        while processes.get(flow_run.id) is not None:
            if anyio.current_time() > deadline:
                _log.warning("flow run %s: the previous attempt's process is still there; killing it", flow_run.id)
                await processes.kill(flow_run.id, force=True)
                deadline = anyio.current_time() + PREVIOUS_ATTEMPT_SECONDS
            await anyio.sleep(0.02)

    @staticmethod
    async def _execute(executor: Any, task_status: anyio.abc.TaskStatus[int] | None) -> FlowRunExecutionResult | None:
        execution: FlowRunExecutionResult | None = None
        started = anyio.Event()

        async def submit() -> None:
            nonlocal execution
            execution = await executor.submit(task_status=_Started(started, task_status))

        async with anyio.create_task_group() as group:
            group.start_soon(submit)
        return execution

    async def _report_crash_when_reachable(self, flow_run: FlowRun, code: int | None) -> None:
        """The run's process ended without an end recorded while the API was unreachable: record
        Crashed once the API answers again (unless the run has meanwhile ended)."""
        delay = 1.0
        while True:
            await anyio.sleep(delay)
            try:
                current = await self.client.read_flow_run(flow_run.id)
                if current.state is not None and current.state.type not in (StateType.RUNNING, StateType.PENDING):
                    return
                await self.client.set_flow_run_state(
                    flow_run.id, Crashed(message=f"The run's process exited (code {code}) while the Prefect API "
                                                 "was unreachable; recorded by the worker afterwards."), force=True)
                _log.warning("flow run %s recorded as Crashed after the API outage", flow_run.id)
                return
            except httpx.HTTPError:
                delay = min(delay * 2, 30.0)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Poll; an unreachable or failing API is waited out (Prefect's own loop would stop the
        worker after a dozen failed polls, i.e. within seconds at a sub-second poll)."""
        try:
            runs = await super().get_and_submit_flow_runs()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            self._api_unreachable(exc)
            await anyio.sleep(OUTAGE_POLL_SECONDS)
            return []
        self._api_reachable()
        return runs

    async def _sync_and_initialize(self) -> None:
        try:
            await super()._sync_and_initialize()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            self._api_unreachable(exc)

    async def _submit_run(self, flow_run: FlowRun) -> None:
        """A run whose submission met an API outage is left Scheduled (or is marked Crashed by
        the executor once it can be): the worker itself carries on."""
        try:
            await super()._submit_run(flow_run)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            self._api_unreachable(exc)
            self._release_limit_slot(flow_run.id)
            self._submitting_flow_run_ids.discard(flow_run.id)

    def _api_unreachable(self, exc: Exception) -> None:
        if self._api_down_since is None:
            self._api_down_since = anyio.current_time()
            _log.warning("Prefect API unreachable (%s: %s); still polling every %.0f s", type(exc).__name__, exc,
                         OUTAGE_POLL_SECONDS)

    def _api_reachable(self) -> None:
        if self._api_down_since is not None:
            _log.warning("Prefect API reachable again after %.1f s", anyio.current_time() - self._api_down_since)
            self._api_down_since = None


class _Started:
    """Passes the run's process id on to the worker's task_status (which wants a pid, where the
    executor hands out a ProcessHandle)."""

    def __init__(self, event: anyio.Event, outer: anyio.abc.TaskStatus[int] | None):
        self._event, self._outer = event, outer

    def started(self, handle: ProcessHandle | None = None) -> None:
        self._event.set()
        if self._outer is not None and handle is not None and handle.pid is not None:
            self._outer.started(handle.pid)
