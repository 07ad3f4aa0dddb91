"""The warm worker (deployments/warm_worker.py) without a server: how often it asks Prefect for
due runs (at once on an event that makes a run due, every POLL_SECONDS while a run may come due
with no event to say so, every IDLE_POLL_SECONDS otherwise), and the environment its runs
inherit, built once per settings object."""

from __future__ import annotations

import time

import pytest

from deployments import warm_worker
from deployments.warm_worker import (
    IDLE_POLL_SECONDS,
    POLL_SECONDS,
    PUT_BACK_WINDOW_SECONDS,
    WarmJobConfiguration,
    WarmWorker,
)


def _event(name: str, kind: str = "SCHEDULED") -> dict:
    """A flow-run state event's payload, as Prefect's server sends it (state_payload)."""
    return {"intended": {"from": "PENDING", "to": kind},
            "initial_state": {"type": "PENDING", "name": "Pending"},
            "validated_state": {"type": kind, "name": name}}


@pytest.mark.parametrize(("name", "kind", "due", "put_back"), [
    ("Scheduled", "SCHEDULED", True, False),  # created
    ("Resuming", "SCHEDULED", True, False),  # an approval given
    ("Late", "SCHEDULED", True, False),
    ("AwaitingConcurrencySlot", "SCHEDULED", False, True),
    ("AwaitingRetry", "SCHEDULED", False, True),
    ("Running", "RUNNING", False, False),
    ("Paused", "PAUSED", False, False),
])
def test_each_flow_run_event_is_due_now_put_back_or_neither(name, kind, due, put_back):
    payload = _event(name, kind)
    assert warm_worker._offered_now(payload) is due
    assert warm_worker._put_back(payload) is put_back


def test_a_worker_polls_often_only_while_a_run_may_come_due_unannounced():
    assert POLL_SECONDS < IDLE_POLL_SECONDS
    worker = WarmWorker(work_pool_name="incident-response")
    assert worker.poll_interval() == POLL_SECONDS  # not yet listening to the server's events
    worker._listening = True
    assert worker.poll_interval() == IDLE_POLL_SECONDS  # nothing waits: the events say when
    worker._put_back_at = time.monotonic()
    assert worker.poll_interval() == POLL_SECONDS  # a run waits for a slot or a retry
    worker._put_back_at = time.monotonic() - PUT_BACK_WINDOW_SECONDS - 1
    assert worker.poll_interval() == IDLE_POLL_SECONDS
    worker._listening = False  # the websocket dropped
    assert worker.poll_interval() == POLL_SECONDS


def _time_to_poll(monkeypatch, during_wait) -> float:
    """Seconds from the start of the worker's wait to its poll, with POLL_SECONDS 0.05 and
    IDLE_POLL_SECONDS 5; `during_wait(worker)` is called 0.2 s into the wait."""
    import anyio
    from prefect.workers.process import ProcessWorker

    monkeypatch.setattr(warm_worker, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(warm_worker, "IDLE_POLL_SECONDS", 5.0)
    polled: list[float] = []

    async def poll(self):
        polled.append(time.monotonic())
        return []

    monkeypatch.setattr(ProcessWorker, "get_and_submit_flow_runs", poll)
    worker = WarmWorker(work_pool_name="incident-response")
    worker._listening = True

    async def scenario() -> float:
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(worker.get_and_submit_flow_runs)
            await anyio.sleep(0.2)
            during_wait(worker)
        return polled[0] - started

    return anyio.run(scenario)


def test_a_run_put_back_during_an_idle_wait_shortens_it_without_a_poll_of_its_own(monkeypatch):
    assert _time_to_poll(monkeypatch, lambda worker: setattr(worker, "_put_back_at", time.monotonic())) < 1.0


def test_an_event_that_makes_a_run_due_ends_the_wait_at_once(monkeypatch):
    assert _time_to_poll(monkeypatch, lambda worker: worker._due.set()) < 0.5


def test_a_runs_environment_is_built_once_per_settings_object(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.base import BaseJobConfiguration

    built: list[str] = []
    real = BaseJobConfiguration._base_environment.__func__  # type: ignore[attr-defined]

    def counting(cls):
        built.append(PREFECT_API_URL.value() or "")
        return real(cls)

    monkeypatch.setattr(BaseJobConfiguration, "_base_environment", classmethod(counting))
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        first = WarmJobConfiguration._base_environment()
        first["PREFECT_API_URL"] = "changed by a caller"
        again = WarmJobConfiguration._base_environment()
    assert again["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"  # a copy each time
    assert len(built) == 1
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4300/api"}):
        other = WarmJobConfiguration._base_environment()
    assert other["PREFECT_API_URL"] == "http://127.0.0.1:4300/api"  # other settings: built again
    assert len(built) == 2


def test_the_fork_server_preload_imports_prefects_engine_and_cli_and_builds_the_models():
    """What every forked run would otherwise import or build itself (deployments/warm_preload.py)."""
    import subprocess
    import sys

    probe = ("import sys, deployments.warm_preload, prefect.events.schemas.events as events; "
             "print(all(name in sys.modules for name in ('prefect.cli', 'prefect.engine', 'prefect.flow_engine', "
             "'prefect.task_engine', 'kubernetes.client.models.v1_deployment')), "
             "events.ReceivedEvent.__pydantic_complete__)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"], done.stdout
