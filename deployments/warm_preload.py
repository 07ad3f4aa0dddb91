"""Imported once by the warm worker's fork server (deployments/forked_engine.py), before any run:
Prefect's engine and every flow module of the project, with everything they import. Each run's
process is forked from there, so none of it is imported again. No threads may be started here:
a fork copies only the thread that forks."""

import importlib
import pkgutil

import kubernetes.client
import prefect.cli  # imported for the runs (see below)
import prefect.engine  # imported for the runs
import prefect.flow_engine  # imported for the runs
import prefect.task_engine  # noqa: F401 - imported for the runs (the four bind one name: ruff sees only this one)

import deployments.forked_engine  # noqa: F401 - the child's entry point (run_engine) lives there
import flows
from deployments.prefect_private import complete_models, share_tls_contexts
from integrations.http import tls_context

for _module in pkgutil.iter_modules(flows.__path__):
    importlib.import_module(f"flows.{_module.name}")

# The Kubernetes client imports its API classes and models when first asked for one (the package
# is large): left to the runs, every run imported them again, 40% of its CPU (py-spy, one
# service-down run to its approval). All of them, once, here: ~1 s at the worker's start, and
# ~80 MB in the fork server that its forked runs share.
for _name in dir(kubernetes.client):
    if _name[:1].isupper():
        getattr(kubernetes.client, _name)

# prefect.cli (imported above): multiprocessing prepares each forked child as a child of the
# worker, running the worker's main script again (`prefect`, the CLI), which imports prefect.cli;
# left to the runs, that was 9% of a run's CPU.

# The runbooks' verifying TLS context (certifi's bundle), loaded once for every run; and Prefect's
# own clients made to share one (each client, events websocket and version check in a run built
# its own: ~27 ms of CPU apiece, 3-5 of them a run).
tls_context()
share_tls_contexts()

# Prefect's pydantic models (FlowRun, TaskRun, State, events, filters, artifacts, ...) finish
# building their validators when first used: in every run's process that was ~10% of its main
# thread (the engine reading its flow run), and again for the events and filters of Prefect's
# suspension observer and for each artifact. Built here, once.
complete_models()
