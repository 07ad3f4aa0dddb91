"""The private parts of Prefect the warm worker relies on (deployments/prefect_private.py), checked
against the installed Prefect: after an upgrade that moved or changed one, this fails here and
names it. Also: nothing else in the project imports a private Prefect module."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import ssl
from pathlib import Path

import certifi
import pytest

from deployments import prefect_private
from deployments.prefect_private import CALLED_WITH, PRIVATE_MEMBERS, PRIVATE_MODULES

ROOT = Path(__file__).resolve().parent.parent


def _class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("module", sorted(PRIVATE_MODULES))
def test_each_private_module_still_has_what_is_imported_from_it(module):
    imported = importlib.import_module(module)
    missing = [name for name in PRIVATE_MODULES[module] if not hasattr(imported, name)]
    assert not missing, f"{module} no longer has {missing}: adapt deployments/prefect_private.py"


@pytest.mark.parametrize(("owner", "name", "kind", "use"), PRIVATE_MEMBERS,
                         ids=[f"{owner.rsplit(':', 1)[1]}.{name}" for owner, name, _, _ in PRIVATE_MEMBERS])
def test_each_private_member_is_still_there(owner, name, kind, use):
    cls = _class(owner)
    if kind == "method":
        assert callable(getattr(cls, name, None)), f"{owner}.{name} ({use}) is gone: adapt the warm worker"
    else:  # an instance attribute: set somewhere in the class or its bases
        sources = "".join(inspect.getsource(base) for base in cls.__mro__ if base.__module__.startswith("prefect"))
        assert f"self.{name}" in sources, f"{owner} no longer sets self.{name} ({use}): adapt the warm worker"


@pytest.mark.parametrize(("target", "keywords"), CALLED_WITH, ids=[target for target, _ in CALLED_WITH])
def test_each_private_call_still_takes_the_arguments_the_worker_passes(target, keywords):
    owner, _, method = target.rpartition(".")
    parameters = inspect.signature(getattr(_class(owner), method)).parameters
    missing = [keyword for keyword in keywords if keyword not in parameters]
    assert not missing, f"{target} no longer takes {missing}: adapt the warm worker"


def test_the_adapter_names_every_private_it_imports():
    tree = ast.parse(Path(prefect_private.__file__).read_text())
    imported = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module and "._" in node.module for alias in node.names}
    named = {(module, name) for module, names in PRIVATE_MODULES.items() for name in names}
    assert imported == named


def test_no_other_module_imports_a_private_prefect_module():
    offenders = []
    for path in sorted(ROOT.glob("*/*.py")):
        if path.parts[-2] in ("tests", ".venv") or path.name == "prefect_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefect") \
                    and any(part.startswith("_") for part in node.module.split(".")):
                offenders.append(f"{path.relative_to(ROOT)}: from {node.module} import ...")
    assert not offenders, f"private Prefect imports outside deployments/prefect_private.py: {offenders}"


@pytest.mark.parametrize("module", prefect_private.TLS_CONTEXT_MODULES)
def test_each_module_whose_tls_context_is_shared_still_builds_one_from_its_ssl_global(module):
    source = inspect.getsource(importlib.import_module(module))
    assert "ssl.create_default_context(cafile=" in source, (
        f"{module} no longer builds its verifying TLS context with ssl.create_default_context(cafile=...): "
        "adapt share_tls_contexts in deployments/prefect_private.py")


def test_prefects_clients_share_one_verifying_context_and_a_changed_ca_file_gets_a_new_one(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_URL, temporary_settings

    def context_of(client) -> ssl.SSLContext:
        return client._client._transport._pool._ssl_context  # httpx's transport -> httpcore's pool

    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes())
    settings = {PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_API_SSL_CERT_FILE: str(bundle)}
    with temporary_settings(updates=settings):
        prefect_private.share_tls_contexts()
        first, second = get_client(sync_client=True), get_client(sync_client=True)
        assert context_of(first) is context_of(second)
        assert context_of(get_client()) is context_of(first)  # the async client too
        os.utime(bundle, (1, 1))  # the bundle replaced on disk: read again
        changed = get_client(sync_client=True)
        assert context_of(changed) is not context_of(first)
        assert context_of(changed).verify_mode == ssl.CERT_REQUIRED


def test_the_insecure_context_is_never_shared():
    prefect_private.share_tls_contexts()
    shim = importlib.import_module("prefect._internal.version_checking").ssl
    insecure = shim.create_default_context()
    insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE  # what Prefect does with it
    assert shim.create_default_context() is not insecure
    assert shim.create_default_context(cafile=certifi.where()).verify_mode == ssl.CERT_REQUIRED


def test_every_client_model_a_run_uses_is_built_before_the_runs_fork():
    assert prefect_private.complete_models() >= 0
    import pydantic

    incomplete = [f"{name}.{model.__name__}" for name in prefect_private.MODEL_MODULES
                  for model in vars(importlib.import_module(name)).values()
                  if inspect.isclass(model) and issubclass(model, pydantic.BaseModel) and model.__module__ == name
                  and not model.__pydantic_complete__]
    assert not incomplete, f"still built lazily in every run: {incomplete}"
