"""Imported once by the warm worker's fork server (deployments/forked_engine.py), before any run:
Prefect's engine and every flow module of the project, with everything they import. Each run's
process is forked from there, so none of it is imported again. No threads may be started here:
a fork copies only the thread that forks."""

import importlib
import pkgutil

import prefect.engine  # noqa: F401
import prefect.flow_engine  # noqa: F401

import deployments.forked_engine  # noqa: F401 - the child's entry point (run_engine) lives there
import flows

for _module in pkgutil.iter_modules(flows.__path__):
    importlib.import_module(f"flows.{_module.name}")
