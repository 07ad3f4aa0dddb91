"""Every private part of Prefect that the warm worker (deployments/warm_worker.py,
deployments/forked_engine.py) relies on, named in one place; and the one place where the
project changes how Prefect's client behaves (share_tls_contexts, below).

Prefect keeps these out of its public API, so any release may move or change them; that is why
pyproject.toml pins `prefect` below its next minor release. `tests/test_prefect_private.py`
checks each one against the installed Prefect (it exists, is the kind of thing the worker uses,
takes the arguments the worker passes): after an upgrade that changed one, that test fails and
names it, and this module is where the worker is adapted.

Upgrade path: raise the pin in pyproject.toml, `make venv`, run `pytest
tests/test_prefect_private.py`; for each failure, find the private's new home or shape in
Prefect's source and adapt the import here (or the worker where it overrides a method); then
`make test` (tests/test_warm_worker.py, tests/test_scale_out.py and tests/test_ui.py run the
worker end to end), `make constraints`, and lift the pin to the next minor release.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import ssl
import sys
from typing import TYPE_CHECKING, Any

import certifi
import pydantic
from prefect.runner._cancellation_manager import CancellationManager
from prefect.runner._flow_run_executor import FlowRunExecutorContext
from prefect.runner._hook_runner import HookRunner
from prefect.runner._process_manager import ProcessHandle
from prefect.settings import PREFECT_API_SSL_CERT_FILE

if TYPE_CHECKING:
    from prefect.runner._control_channel import ControlChannel

__all__ = ["CancellationManager", "ControlChannel", "FlowRunExecutorContext", "HookRunner", "ProcessHandle",
           "cancellation_manager", "share_tls_contexts", "PRIVATE_MODULES", "PRIVATE_MEMBERS", "CALLED_WITH",
           "TLS_CONTEXT_MODULES", "complete_models", "MODEL_MODULES"]

# The private modules imported, and what of each.
PRIVATE_MODULES = {
    "prefect.runner._flow_run_executor": ("FlowRunExecutorContext",),  # a shared client, control channel, observer
    "prefect.runner._hook_runner": ("HookRunner",),  # on_cancellation / on_crashed hooks of a run
    "prefect.runner._process_manager": ("ProcessHandle",),  # what a process starter hands the executor
    "prefect.runner._control_channel": ("ControlChannel",),  # how the executor tells a run's process to stop
    "prefect.runner._cancellation_manager": ("CancellationManager",),  # kill -> hooks -> Cancelled
}

# Private members of Prefect's classes that the worker reads, sets or overrides:
# (module:class, name, "method" | "attribute", how the worker uses it).
PRIVATE_MEMBERS = (
    ("prefect.workers.base:BaseWorker", "_submit_run", "method", "overridden: an API outage while submitting"),
    ("prefect.workers.base:BaseWorker", "_sync_and_initialize", "method", "overridden: an API outage is waited out"),
    ("prefect.workers.base:BaseWorker", "_initialize_after_sync", "method", "overridden: watch pool events"),
    ("prefect.workers.base:BaseWorker", "_release_limit_slot", "method", "called for a run whose submission failed"),
    ("prefect.workers.base:BaseWorker", "_runs_task_group", "attribute", "the task group the worker's runs live in"),
    ("prefect.workers.base:BaseWorker", "_exit_stack", "attribute", "holds the shared executor contexts"),
    ("prefect.workers.base:BaseWorker", "_work_pool_name", "attribute", "the pool's runs are looked up by it"),
    ("prefect.workers.base:BaseWorker", "_work_pool", "attribute", "its id filters the pool's events"),
    ("prefect.workers.base:BaseWorker", "_submitting_flow_run_ids", "attribute", "a failed submission leaves it"),
    ("prefect.workers.base:BaseWorker", "_prefetch_seconds", "attribute", "set to 0: no run claimed before due"),
    ("prefect.workers.base:BaseJobConfiguration", "_base_environment", "method", "the settings a run inherits"),
    ("prefect.runner._flow_run_executor:FlowRunExecutorContext", "_cancellation_manager", "attribute",
     "its CancellationManager, made to log instead of cancel the worker on an error"),
)

# Calls the worker makes into private classes: (module:class.method, keyword arguments passed).
CALLED_WITH = (
    ("prefect.runner._flow_run_executor:FlowRunExecutorContext.create_executor", ("hook_runner", "propose_submitting")),
    ("prefect.runner._hook_runner:HookRunner.__init__", ("resolve_flow",)),
    ("prefect.runner._process_manager:ProcessHandle.__init__", ("termination_scope",)),
    ("prefect.runner._cancellation_manager:CancellationManager.cancel_by_id", ("flow_run_id",)),
)


def cancellation_manager(context: FlowRunExecutorContext) -> CancellationManager:
    """The CancellationManager of a shared executor context (kill -> on_cancellation hooks ->
    Cancelled); FlowRunExecutorContext does not expose it."""
    manager: CancellationManager = context._cancellation_manager
    return manager


# Prefect's client modules that build a verifying TLS context of their own for every client,
# websocket and version check (`ssl.create_default_context(cafile=...)`: the CA bundle parsed
# again, ~23 ms of CPU each, several times in every run's process).
TLS_CONTEXT_MODULES = ("prefect.client.orchestration", "prefect._internal.websockets",
                       "prefect._internal.version_checking")


class _SharedVerifyingContexts:
    """Stands in for the `ssl` module inside TLS_CONTEXT_MODULES: a verifying context asked for
    with a CA file (or directory, or data) is built once per CA source and shared (an SSLContext
    is safe to share between threads and clients; Prefect only configures a context before its
    first use). A CA file that changes on disk gets a new context. A call without a CA source is
    Prefect's insecure branch (PREFECT_API_TLS_INSECURE_SKIP_VERIFY), which turns verification
    off on what it gets: that one is never shared."""

    def __getattr__(self, name: str) -> Any:
        return getattr(ssl, name)

    def create_default_context(self, purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: str | None = None,
                               capath: str | None = None, cadata: str | bytes | None = None) -> ssl.SSLContext:
        if cafile is None and capath is None and cadata is None:
            return ssl.create_default_context(purpose)
        return _verifying_context(purpose, cafile, capath, cadata, _modified(cafile))


@functools.lru_cache(maxsize=8)
def _verifying_context(purpose: ssl.Purpose, cafile: str | None, capath: str | None, cadata: str | bytes | None,
                       modified: float | None) -> ssl.SSLContext:
    return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def _modified(path: str | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path else None
    except OSError:
        return None  # ssl reports the missing file itself


def share_tls_contexts() -> ssl.SSLContext:
    """Prefect's clients in this process share one verifying TLS context per CA source instead
    of parsing the CA bundle for each client. Idempotent; affects only TLS_CONTEXT_MODULES.
    Returns the context Prefect's clients will ask for (PREFECT_API_SSL_CERT_FILE, else
    certifi's bundle), built now: a process that forks runs builds it once for all of them."""
    for name in TLS_CONTEXT_MODULES:
        module = importlib.import_module(name)
        if not isinstance(getattr(module, "ssl", None), _SharedVerifyingContexts):
            setattr(module, "ssl", _SharedVerifyingContexts())  # noqa: B010 - a module global, replaced on purpose
    cafile = PREFECT_API_SSL_CERT_FILE.value() or certifi.where()
    return _SharedVerifyingContexts().create_default_context(cafile=cafile)


# Modules of Prefect's client whose models a run uses that the flows' imports do not load:
# artifacts, and the events and filters of Prefect's suspension observer (a private module).
MODEL_MODULES = ("prefect.artifacts", "prefect.events.filters", "prefect.events.schemas.events",
                 "prefect._internal.observers", "prefect.client.schemas.objects",
                 "prefect.client.schemas.responses", "prefect.client.schemas.actions")


def complete_models() -> int:
    """Build now every pydantic model of Prefect's client that would finish building when first
    used (the validators of a model with forward references are built lazily, in every process
    that uses it): MODEL_MODULES and every other loaded prefect module outside the server.
    Returns how many were built."""
    for name in MODEL_MODULES:
        importlib.import_module(name)
    built = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith("prefect.") or name.startswith("prefect.server."):
            continue
        for model in list(vars(module).values()):
            if (inspect.isclass(model) and issubclass(model, pydantic.BaseModel) and model.__module__ == name
                    and not model.__pydantic_complete__):
                model.model_rebuild(raise_errors=False)
                built += 1
    return built
