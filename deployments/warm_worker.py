"""The `runbooks-warm` worker type: Prefect's process worker, with each run's process forked
from a fork server that has Prefect and every flow imported already.

Why: a process worker starts each run as `python -m prefect.engine`, a new interpreter that
spends ~3 s importing Prefect and the flows before the first step, and polls every 10 s. This
worker keeps everything else of Prefect's: it claims runs through the worker API (so work-pool
and work-queue pause and the pool, queue and deployment concurrency limits hold), applies the
deployment's `job_variables` (`env`, `working_dir`), heartbeats and shows in the UI under the
pool's Workers, and tracks each run's process with Prefect's own executor (control channel,
Cancel -> kill -> on_cancellation hooks -> Cancelled, a process that dies without an end ->
Crashed). How the process starts differs (deployments/forked_engine.py): it is forked from a
fork server that imported everything once, and runs exactly what `python -m prefect.engine`
runs. docs/alerts.md says what else differs, and why.

Start it with `prefect worker start --pool incident-response --type runbooks-warm` (registered
through the `prefect.collections` entry point in pyproject.toml).
"""

from __future__ import annotations

import importlib
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.events.clients import get_events_subscriber
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter
from prefect.exceptions import ObjectNotFound
from prefect.flows import load_flow_from_flow_run
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Crashed, Scheduled
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult
from pydantic import PrivateAttr

from deployments import log_format
from deployments.forked_engine import PRELOAD, ForkedEngineStarter, start_fork_server
from deployments.prefect_private import FlowRunExecutorContext, HookRunner, ProcessHandle, cancellation_manager
from deployments.worker_metrics import WorkerStats, prepare_run_metrics, serve

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse
    from prefect.flows import Flow

WORKER_TYPE = "runbooks-warm"
# A Pending run nobody's worker label claims is taken to be stranded after this long (a claim
# takes well under a second from Pending to a running process).
STRANDED_SECONDS = 60.0
# A Pending run whose worker is gone is given to a live one after this long (the worker that
# claimed it was killed between the claim and the run's start; Prefect 3.9 labels a Pending run
# with no worker, so nothing else would ever run it). Checked every PENDING_SWEEP_SECONDS by one
# worker of the pool: the first live one by name. Only runs that went Pending before a worker of
# the pool stopped heartbeating are candidates: a run a live worker claimed and is slow to start
# (50 at once on 2 cores) is never taken from it.
PENDING_STRANDED_SECONDS = float(os.environ.get("RUNBOOKS_PENDING_STRANDED_SECONDS", "30"))
PENDING_SWEEP_SECONDS = 5.0
# Prefect's cancellation sequence (stop, on_cancellation hooks, Cancelled) ends well within this.
CANCEL_GRACE_SECONDS = 5.0
# How often the worker looks for runs it claimed that are Cancelling with no process of its own
# left to stop, and how long such a run must have been Cancelling before the worker ends it.
CANCEL_SWEEP_SECONDS = 5.0
# Prefect's own sequence took up to 50 s a run with 50 cancelled at once on 2 cores
CANCEL_STRANDED_SECONDS = float(os.environ.get("RUNBOOKS_CANCEL_STRANDED_SECONDS", "60"))
# While the Prefect API is unreachable the worker keeps polling, at most this far apart.
OUTAGE_POLL_SECONDS = 2.0
# The worker asks for due runs as soon as the server announces a flow-run event of its pool that
# makes a run due (created, resumed, late). Otherwise it polls every POLL_SECONDS while a run of
# the pool waits to come back (put back for a concurrency slot or a retry: no event says when it
# is due) or while the events websocket is down, and every IDLE_POLL_SECONDS (Prefect's own
# default) when nothing is waiting: a run that comes due with no event (one scheduled ahead, a
# drill) starts at most that late. PREFECT_WORKER_QUERY_SECONDS (0.05 under `make up`) is only the
# pause between two polls. Each poll costs the server ~15 ms of CPU: 10 polls a second took a
# fifth of a core on a 2-core machine, and one a second from each of two idle workers half of an
# idle server's CPU (4.1 CPU-s a minute, 2.2 at one poll in 30 s).
POLL_SECONDS = float(os.environ.get("RUNBOOKS_WORKER_POLL_SECONDS", "1.0"))
IDLE_POLL_SECONDS = float(os.environ.get("RUNBOOKS_WORKER_IDLE_POLL_SECONDS", "10.0"))
# How long after a run of the pool was put back the worker keeps polling every POLL_SECONDS; a run
# still waiting is put back again (and renews this) each time its slot wait ends.
PUT_BACK_WINDOW_SECONDS = 30.0

_log = logging.getLogger("runbooks.warm_worker")


@dataclass
class _BuiltEnvironment:
    """The settings a run's environment was last built from, and that environment."""

    settings: object = None
    env: dict[str, str] = field(default_factory=dict)


_BASE_ENVIRONMENT = _BuiltEnvironment()


class WarmJobConfiguration(ProcessJobConfiguration):
    """The process worker's job configuration (same fields, same pool template), plus where a
    run can start without its pull steps."""

    _direct: tuple[Path, str] | None = PrivateAttr(default=None)

    @property
    def direct(self) -> tuple[Path, str] | None:
        """(directory, entrypoint) when the deployment's only pull step is
        `set_working_directory`, as `prefect deploy` records for code that is already on the
        worker's machine: the run then starts in that directory with PREFECT__FLOW_ENTRYPOINT,
        the way Prefect's Runner starts the flows it serves, instead of reading the deployment
        again and running the step in the engine (~0.15 s). Any other pull step (git_clone,
        ...) runs in the engine as usual."""
        return self._direct

    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        """Prefect's: the worker's settings, written out as every run's environment. Built once
        per settings object (the worker's do not change while it runs) instead of for every run
        it starts: ~23 ms of the worker's CPU a run, more under load (py-spy, 50 runs at once)."""
        settings = get_current_settings()
        if _BASE_ENVIRONMENT.settings is not settings:
            _BASE_ENVIRONMENT.settings, _BASE_ENVIRONMENT.env = settings, super()._base_environment()
        return dict(_BASE_ENVIRONMENT.env)

    def prepare_for_flow_run(self, flow_run: FlowRun, deployment: DeploymentResponse | None = None,
                             flow: Any = None, work_pool: Any = None, worker_name: str | None = None,
                             worker_id: Any = None) -> None:
        super().prepare_for_flow_run(flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id)
        self._direct = _direct_start(deployment)


def _direct_start(deployment: DeploymentResponse | None) -> tuple[Path, str] | None:
    if deployment is None:
        return None
    steps, entrypoint = deployment.pull_steps or [], deployment.entrypoint or ""
    if len(steps) != 1 or ":" not in entrypoint:
        return None
    (step, arguments), = steps[0].items()
    directory = (arguments or {}).get("directory")
    if step.rsplit(".", 1)[-1] != "set_working_directory" or not isinstance(directory, str) or "{{" in directory:
        return None
    return Path(directory), entrypoint


def _import_flows() -> None:
    importlib.import_module(PRELOAD)


class FlowsOfDeployments:
    """The flow whose on_cancellation / on_crashed hooks the worker runs for a run, loaded once
    per deployment version. Prefect's process worker loads it anew for every run: it reads the
    deployment, runs its pull steps (a chdir of the whole worker process) and executes the
    entrypoint's file again. With 50 runs cancelled at once that took ~12 s a run on a 2-core
    machine, and every run stayed Cancelling meanwhile. Prefect's Runner likewise keeps the
    flows of the deployments it serves. A deployment applied again (a new `updated`) is loaded
    again."""

    def __init__(self, client: Callable[[], PrefectClient]):
        self._client = client
        self._flows: dict[UUID, tuple[datetime | None, Flow[..., Any]]] = {}
        self._loading: dict[UUID, anyio.Lock] = {}

    async def __call__(self, flow_run: FlowRun) -> Flow[..., Any]:
        if flow_run.deployment_id is None:  # Prefect's loader says why it cannot
            return await load_flow_from_flow_run(flow_run)
        deployment = await self._client().read_deployment(flow_run.deployment_id)
        async with self._loading.setdefault(deployment.id, anyio.Lock()):  # 50 cancels at once load it once
            cached = self._flows.get(deployment.id)
            if cached is None or cached[0] != deployment.updated:
                flow = await load_flow_from_flow_run(flow_run)
                self._flows[deployment.id] = (deployment.updated, flow)
                return flow
            return cached[1]


class WarmWorker(ProcessWorker):
    type = WORKER_TYPE
    job_configuration = WarmJobConfiguration
    _description = ("Prefect's process worker with each run forked from a warm fork server (Prefect and the flows "
                    "imported once): the first step of a run starts in well under a second.")
    _display_name = "Process (warm fork server)"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._lanes: list[FlowRunExecutorContext] = []
        self._api_down_since: float | None = None
        self._hooks = HookRunner(resolve_flow=FlowsOfDeployments(lambda: self.client))
        self._due = anyio.Event()
        self._watching: anyio.CancelScope | None = None
        self._listening = False  # to the server's flow-run events of the pool
        self._put_back_at = float("-inf")  # when a run of the pool was last put back for later (monotonic)
        self._ending: set[UUID] = set()  # stranded Cancels being ended by this worker
        self._stats = WorkerStats()  # served on RUNBOOKS_WORKER_METRICS_PORT (deployments/worker_metrics.py)
        # A forked run starts in well under a second: no run is claimed before it is due (a run
        # put back for a concurrency slot would otherwise be claimed and refused in a loop).
        self._prefetch_seconds = 0

    async def setup(self) -> None:
        await super().setup()  # the worker's own client checks the server's API version here
        # The fork server (and so every run's process) starts with the settings exactly as a
        # run's environment spells them (Prefect writes them out normalised, e.g. 'False'), so
        # that a run without PREFECT_* of its own need not read its settings again (~0.1 s);
        # and the runs skip the version handshake the worker has just made (two requests each).
        os.environ.update(self.job_configuration._base_environment())
        os.environ["PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED"] = "false"
        _observable(self._stats)
        await anyio.to_thread.run_sync(start_fork_server)
        # Executor contexts shared by every run, as Prefect's Runner shares its one: a client, a
        # control channel and a cancellation observer each, instead of a websocket pair per
        # run. Two, so that a resumed run can start while its suspended attempt is still
        # exiting in the other (see _context_for).
        self._lanes = [await self._exit_stack.enter_async_context(FlowRunExecutorContext()) for _ in range(2)]
        for lane in self._lanes:
            _contain_cancel_errors(lane)

    async def run(self, flow_run: FlowRun, configuration: WarmJobConfiguration,  # type: ignore[override]
                  task_status: anyio.abc.TaskStatus[int] | None = None) -> ProcessWorkerResult:
        async with AsyncExitStack() as stack:
            context = await self._context_for(flow_run, stack)
            env, cwd = dict(configuration.env), configuration.working_dir
            if configuration.direct is not None:
                cwd, env["PREFECT__FLOW_ENTRYPOINT"] = configuration.direct
            cwd = cwd or Path(stack.enter_context(tempfile.TemporaryDirectory(suffix="prefect")))
            starter = ForkedEngineStarter(env, Path(cwd), context.control_channel)
            executor = context.create_executor(flow_run, starter, hook_runner=self._hooks, propose_submitting=False)
            self._stats.run_started()
            try:
                execution = await executor.submit(task_status=_PidOf(task_status))
            except BaseException:
                self._stats.run_ended(None)
                raise
        self._background(self._end_cancel_missed_at_start, flow_run.id)
        if execution is None:  # cancelled before it started, or the server refused it: nothing ran
            self._stats.run_skipped()
            if task_status is not None:
                task_status.started(0)
            return ProcessWorkerResult(status_code=0, identifier="")
        self._stats.run_ended(execution.status_code)
        if execution.crash_unreported:
            self._background(self._report_crash_when_reachable, flow_run, execution.status_code)
        return ProcessWorkerResult(status_code=execution.status_code or 0, identifier=str(execution.handle.pid))

    def _background(self, work: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `work` in the worker's task group for its runs, where an error would cancel the
        worker itself (anyio cancels a task group's host when a child raises): it is logged."""
        async def logged() -> None:
            try:
                await work(*args)
            except Exception:  # noqa: BLE001 - the worker must go on claiming runs
                _log.exception("the worker's background step %s failed", getattr(work, "__name__", work))

        self._runs().start_soon(logged)

    def _runs(self) -> anyio.abc.TaskGroup:
        """The worker's task group for its runs (Prefect opens it when the worker starts)."""
        assert self._runs_task_group is not None, "the worker is not started"
        return self._runs_task_group

    async def _end_cancel_missed_at_start(self, flow_run_id: UUID) -> None:
        """A Cancel pressed while the run was being claimed reaches no process (the executor
        watches for Cancelling only once the process is registered); the engine then refuses to
        run it and exits, and the run would stay Cancelling. Once its process has ended and
        Prefect's own cancellation sequence has had its time (hooks, then Cancelled), a run
        still Cancelling is recorded Cancelled."""
        await anyio.sleep(CANCEL_GRACE_SECONDS)
        try:
            current = await self.client.read_flow_run(flow_run_id)
            if current.state is not None and current.state.type == StateType.CANCELLING:
                await self.client.set_flow_run_state(flow_run_id, Cancelled(
                    message=current.state.message or "Cancelled as it started; its process has ended."), force=True)
        except (httpx.HTTPError, ObjectNotFound) as exc:
            _log.warning("flow run %s: could not check for a Cancel missed at its start: %s", flow_run_id, exc)

    async def _end_stranded_cancels(self) -> None:
        """Every CANCEL_SWEEP_SECONDS: a run this worker claimed that has been Cancelling for
        CANCEL_STRANDED_SECONDS while no process of it runs here is ended as Prefect's sequence
        would have ended it (on_cancellation hooks, then Cancelled). Prefect's observer hears of a
        Cancel over the events websocket and polls only while that is down: a Cancel whose event
        was lost, or that came as the run's process was exiting, was otherwise never ended
        (seen with 50 runs cancelled at once on 2 cores: 6 stayed Cancelling for 4 minutes)."""
        while True:
            await anyio.sleep(CANCEL_SWEEP_SECONDS)
            try:
                runs = await self._pool_runs(StateType.CANCELLING)
            except Exception as exc:  # noqa: BLE001 - an error here would stop the worker; look again later
                _log.info("could not look for stranded Cancels: %s: %s", type(exc).__name__, exc)
                continue
            now = datetime.now(timezone.utc)
            for run in runs:
                if run.id not in self._ending and self._stranded_cancel(run, now):
                    self._ending.add(run.id)
                    self._background(self._end_cancel, run)

    def _stranded_cancel(self, run: FlowRun, now: datetime) -> bool:
        return _owner(run) == self.name and _state_age(run, now) > CANCEL_STRANDED_SECONDS

    def _lane_of(self, run_id: UUID) -> FlowRunExecutorContext | None:
        """The shared executor context in which a process of this run still runs, if any."""
        return next((lane for lane in self._lanes if lane.process_manager.get(run_id)), None)

    async def _pool_runs(self, state: StateType) -> list[FlowRun]:
        """This worker's pool's runs in `state` (raises httpx.HTTPError when the API fails)."""
        return await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])))

    async def _end_cancel(self, run: FlowRun) -> None:
        try:
            lane = self._lane_of(run.id)
            if lane is not None:  # the Cancel never reached the process: Prefect's own sequence, now
                _log.warning("flow run %s (%s) has been Cancelling for %.0f s and its process still runs: "
                             "stopping it", run.name, run.id, CANCEL_STRANDED_SECONDS)
                await cancellation_manager(lane).cancel_by_id(run.id)
            else:
                await self._end_cancel_of(run)
        finally:
            self._ending.discard(run.id)

    async def _end_cancel_of(self, run: FlowRun) -> None:
        if run.state is not None:
            await self._hooks.run_cancellation_hooks(run, run.state)
        try:
            current = await self.client.read_flow_run(run.id)
            if current.state is not None and current.state.type == StateType.CANCELLING:
                await self.client.set_flow_run_state(run.id, Cancelled(
                    message=current.state.message or "Cancelled; its process had already ended."), force=True)
                _log.warning("flow run %s (%s) was Cancelling with no process left: recorded Cancelled", run.name,
                             run.id)
        except (httpx.HTTPError, ObjectNotFound) as exc:
            _log.warning("flow run %s: could not end its Cancel: %s", run.id, exc)

    async def _context_for(self, flow_run: FlowRun, stack: AsyncExitStack) -> FlowRunExecutorContext:
        """A shared executor context in which this run has no attempt still running.

        A resumed run is handed out again while the process that suspended it may still be
        exiting (Prefect joins its heartbeat thread for up to a second). Prefect's executor
        tracks processes and control sessions by flow run id, so in the same context the old
        attempt's clean-up would drop the new attempt's registration and a Cancel would find
        no process. The new attempt goes to the other shared context, or, should both hold
        the run, to one of its own (~0.1 s to open), as every run has under Prefect's process
        worker."""
        assert self._lanes, "the worker is not set up"
        for lane in self._lanes:
            if lane.process_manager.get(flow_run.id) is None:
                return lane
        return await stack.enter_async_context(FlowRunExecutorContext())

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
            except ObjectNotFound:  # the run was deleted meanwhile
                return
            except httpx.HTTPError:
                delay = min(delay * 2, 30.0)

    async def _initialize_after_sync(self) -> None:
        await super()._initialize_after_sync()
        if self._watching is None and self._work_pool is not None:
            self._watching = anyio.CancelScope()
            self._background(self._watch_for_due_runs, self._watching)
            self._background(self._reschedule_stranded_runs)
            self._background(self._reclaim_stranded_pending)
            self._background(self._end_stranded_cancels)
            # The flows' modules, for the on_cancellation / on_crashed hooks the worker runs: imported
            # now, in the background, rather than by the first Cancel on a busy night (it took 30 s
            # with 50 runs in flight on a 2-core machine).
            self._background(anyio.to_thread.run_sync, _import_flows)

    async def _reschedule_stranded_runs(self) -> None:
        """At start: runs of this pool that a worker of this name claimed (Pending) and then
        stopped before starting (`make down`, a crash) have no process and ran none of their
        code; unclaimed-looking Pending runs older than STRANDED_SECONDS likewise. They go back
        to Scheduled and run now, instead of waiting for ever and holding their deployment's
        concurrency slot (a minute's incident-watch would block every later one)."""
        try:
            runs = await self._pool_runs(StateType.PENDING)
        except httpx.HTTPError as exc:
            _log.warning("could not look for runs left Pending by an earlier worker: %s", exc)
            return
        now = datetime.now(timezone.utc)
        for run in runs:
            owner, age = _owner(run), _state_age(run, now)
            if run.id in self._submitting_flow_run_ids or not (owner == self.name or
                                                               (owner is None and age > STRANDED_SECONDS)):
                continue
            try:
                await self.client.set_flow_run_state(run.id, Scheduled(message=(
                    f"Rescheduled by worker {self.name}: left Pending {age:.0f} s ago by a worker that stopped "
                    "before starting it")), force=True)
            except (httpx.HTTPError, ObjectNotFound) as exc:
                _log.warning("flow run %s left Pending by a stopped worker could not be rescheduled: %s", run.id, exc)
                continue
            _log.warning("flow run %s (%s) was left Pending by a stopped worker: rescheduled", run.name, run.id)

    async def _reclaim_stranded_pending(self) -> None:
        """Every PENDING_SWEEP_SECONDS, if this is the pool's sweeper: a run Pending for
        PENDING_STRANDED_SECONDS, since before a worker of the pool was last heard of, that
        this worker is not starting goes back to Scheduled, so a live worker runs it. One
        sweeper, and the run read again just before: two sweepers reading at different moments
        put back a run another had just claimed again."""
        while True:
            await anyio.sleep(PENDING_SWEEP_SECONDS)
            try:
                now = datetime.now(timezone.utc)
                live, dead_since = _liveness(await self.client.read_workers_for_work_pool(self._work_pool_name), now)
                if not live or live[0] != self.name or dead_since is None:
                    continue
                for run in await self._pool_runs(StateType.PENDING):
                    if (run.id not in self._submitting_flow_run_ids and _state_age(run, now) > PENDING_STRANDED_SECONDS
                            and run.state is not None and run.state.timestamp is not None
                            and run.state.timestamp <= dead_since):
                        await self._put_back_pending(run)
            except Exception as exc:  # noqa: BLE001 - an error here would stop the worker; look again later
                _log.info("could not look for stranded Pending runs: %s: %s", type(exc).__name__, exc)

    async def _put_back_pending(self, run: FlowRun) -> None:
        current = await self.client.read_flow_run(run.id)
        if current.state is None or run.state is None or current.state.id != run.state.id:
            return  # it moved on since the list was read
        await self.client.set_flow_run_state(run.id, Scheduled(message=(
            f"Rescheduled by worker {self.name}: Pending for {PENDING_STRANDED_SECONDS:.0f} s with no worker "
            "starting it (the one that claimed it stopped)")), force=True)
        _log.warning("flow run %s (%s) was left Pending by a worker that stopped: rescheduled", run.name, run.id)

    async def _watch_for_due_runs(self, scope: anyio.CancelScope) -> None:
        """Wake the poll when a flow run of this pool changes state (created, resumed, offered
        a concurrency slot): the server's events, over its websocket, as Prefect's own
        cancellation observer receives them."""
        assert self._work_pool is not None
        flow_run_events = EventFilter(event=EventNameFilter(prefix=["prefect.flow-run."]),
                                      any_resource=EventAnyResourceFilter(id=[f"prefect.work-pool.{self._work_pool.id}"]))
        with scope:
            while True:
                try:
                    async with get_events_subscriber(filter=flow_run_events) as events:
                        self._listening = True
                        self._due.set()  # a run created before the subscription began
                        async for event in events:
                            if _offered_now(event.payload):
                                self._due.set()
                            elif _put_back(event.payload):  # no poll now: it is not due yet
                                self._put_back_at = time.monotonic()
                    self._listening = False
                except Exception as exc:  # noqa: BLE001 - the poll goes on; listen again shortly
                    self._listening = False
                    _log.info("not listening for flow-run events (%s: %s); polling every %.1f s", type(exc).__name__,
                              exc, POLL_SECONDS)
                    await anyio.sleep(OUTAGE_POLL_SECONDS)

    async def teardown(self, *exc_info: Any) -> None:
        if self._watching is not None:
            self._watching.cancel()
        await super().teardown(*exc_info)

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Poll when a flow-run event makes a run due, or after poll_interval(). An unreachable
        or failing API is waited out (Prefect's own loop would stop the worker after a dozen
        failed polls, i.e. within seconds at a sub-second poll)."""
        waited = time.monotonic()
        # in steps of POLL_SECONDS: a run put back meanwhile shortens the wait without a poll
        while not self._due.is_set() and time.monotonic() - waited < self.poll_interval():
            with anyio.move_on_after(POLL_SECONDS):
                await self._due.wait()
        self._due = anyio.Event()
        try:
            runs = await super().get_and_submit_flow_runs()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            self._api_unreachable(exc)
            await anyio.sleep(OUTAGE_POLL_SECONDS)
            return []
        self._api_reachable()
        self._stats.polled()
        return runs

    def poll_interval(self) -> float:
        """POLL_SECONDS while a run of the pool may come due with no event to say so (one was put
        back for later, or the events websocket is down), else IDLE_POLL_SECONDS."""
        waiting = time.monotonic() - self._put_back_at < PUT_BACK_WINDOW_SECONDS
        return POLL_SECONDS if waiting or not self._listening else IDLE_POLL_SECONDS

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
        self._stats.prefect_errors += 1
        if self._api_down_since is None:
            self._api_down_since = anyio.current_time()
            _log.warning("Prefect API unreachable (%s: %s); still polling every %.0f s", type(exc).__name__, exc,
                         OUTAGE_POLL_SECONDS)

    def _api_reachable(self) -> None:
        if self._api_down_since is not None:
            _log.warning("Prefect API reachable again after %.1f s", anyio.current_time() - self._api_down_since)
            self._api_down_since = None


def _observable(stats: WorkerStats) -> None:
    """The worker's logs (its own INFO lines, RUNBOOKS_LOG_FORMAT) and its /metrics. Prefect's
    logging leaves the root at WARNING: the worker's own INFO lines were never written."""
    logging.getLogger("runbooks").setLevel(logging.INFO)
    log_format.apply("worker")
    directory = prepare_run_metrics()  # before the fork server starts: every run's process inherits it
    if _served.get("port") is None:  # once per process (a test may set up several workers)
        _served["port"] = serve(stats, directory)


_served: dict[str, int | None] = {}


def _contain_cancel_errors(lane: FlowRunExecutorContext) -> None:
    """Prefect's observer runs each Cancel it hears of (read the run, kill its process, hooks,
    Cancelled) in the context's task group, and the host of that group is the worker's own main
    task: one error there -- a read of the run that timed out with 50 runs cancelled at once on 2
    cores -- cancelled the worker, which then claimed nothing more (every later run stayed
    Scheduled). Such an error is logged instead, and the stranded-Cancel sweep ends the run."""
    manager = cancellation_manager(lane)
    cancel_by_id = manager.cancel_by_id

    async def contained(flow_run_id: UUID) -> None:
        try:
            await cancel_by_id(flow_run_id)
        except Exception:  # noqa: BLE001 - the sweep ends the run; the worker must go on
            _log.exception("flow run %s: Prefect's cancellation failed; the worker ends it within %.0f s",
                           flow_run_id, CANCEL_STRANDED_SECONDS + CANCEL_SWEEP_SECONDS)

    manager.cancel_by_id = contained  # type: ignore[method-assign]  # on this instance only


def _liveness(workers: list[Any], now: datetime) -> tuple[list[str], datetime | None]:
    """The pool's live workers by name (a heartbeat within 3 intervals), and the latest moment a
    worker that is not live any more may still have been alive (its last heartbeat and 3
    intervals; None: no worker of the pool has died in the last 10 minutes). Only a run that
    went Pending before then can be a dead one's."""
    live, last_dead = [], None
    for worker in workers:
        beat = worker.last_heartbeat_time
        if beat is None:
            continue
        grace = timedelta(seconds=3 * (worker.heartbeat_interval_seconds or 30))
        if now - beat <= grace:
            live.append(worker.name)
        elif now - beat <= timedelta(minutes=10) and (last_dead is None or beat + grace > last_dead):
            last_dead = beat + grace
    return sorted(live), last_dead


def _owner(run: FlowRun) -> str | None:
    """The name of the worker that claimed the run (Prefect labels it), if any."""
    owner = (run.labels or {}).get("prefect.worker.name")
    return owner if isinstance(owner, str) else None


def _state_age(run: FlowRun, now: datetime) -> float:
    """Seconds since the run entered its current state (0 when the state has no time)."""
    return (now - run.state.timestamp).total_seconds() if run.state and run.state.timestamp else 0.0


PUT_BACK = ("AwaitingConcurrencySlot", "AwaitingRetry")  # Scheduled again, for later


def _offered_now(payload: Mapping[str, Any]) -> bool:
    """A run that is due now (created, resumed, late); not one put back for later (a concurrency
    slot or a retry to wait for): the polls every POLL_SECONDS find those in time."""
    state = payload.get("validated_state") or {}
    return state.get("type") == "SCHEDULED" and state.get("name") not in PUT_BACK


def _put_back(payload: Mapping[str, Any]) -> bool:
    state = payload.get("validated_state") or {}
    return state.get("type") == "SCHEDULED" and state.get("name") in PUT_BACK


class _PidOf:
    """Passes the run's process id on to the worker's task_status (which wants a pid, where the
    executor hands out a ProcessHandle)."""

    def __init__(self, outer: anyio.abc.TaskStatus[int] | None):
        self._outer = outer

    def started(self, handle: ProcessHandle | None = None) -> None:
        if self._outer is not None and handle is not None and handle.pid is not None:
            self._outer.started(handle.pid)
