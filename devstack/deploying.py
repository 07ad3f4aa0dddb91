"""Registering prefect.yaml's sandbox and staging deployments on the local stack, and not again
when nothing they are made of changed.

`prefect deploy` of the eleven deployments took ~27 s of a 43 s `make up` on a 2-core machine
(half of its CPU spent building TLS contexts, see `api_ca_env`), and `make up` ran it on every
call, also when the stack was already up. The deployments are made of prefect.yaml and the flow
code (entrypoints, parameter schemas, docstrings), so `make up` deploys again when either
changed, when Prefect changed, or when the server no longer has every deployment the last
deploy registered (its database was dropped or a deployment deleted). `RUNBOOKS_REDEPLOY=1`
deploys anyway."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import yaml

from integrations.errors import IntegrationError

# What a deployment is made of: the file that defines it, the flows' code, and the models their
# parameters are typed with.
SOURCES = ("prefect.yaml", "flows/*.py", "incidents/*.py")
# The deployments of prefect.yaml the local stack registers: the sandbox's and staging's
# (production's belong on the production Prefect, docs/install.md).
DEPLOYED = ("sandbox", "staging")


class DeploymentApi(Protocol):
    """What this module needs of the Prefect API (deployments.prefect_api.PrefectApi)."""

    url: str

    def call(self, method: str, path: str, **kwargs: Any) -> Any: ...


def fingerprint(root: Path, api_url: str) -> str:
    """A digest of every source a deployment is made of, Prefect's version and the API's address."""
    digest = hashlib.sha256(f"{version('prefect')}\n{api_url}\n".encode())
    for pattern in SOURCES:
        for path in sorted(root.glob(pattern)):
            digest.update(f"{path.relative_to(root)}\n".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class DeployRecord:
    """What the last successful deploy registered, kept in the stack's run directory."""

    fingerprint: str
    deployment_ids: tuple[str, ...]

    @classmethod
    def load(cls, path: Path) -> DeployRecord | None:
        try:
            raw = json.loads(path.read_text())
            return cls(str(raw["fingerprint"]), tuple(str(i) for i in raw["deployment_ids"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"fingerprint": self.fingerprint, "deployment_ids": list(self.deployment_ids)}))


def deployment_ids(api: DeploymentApi) -> tuple[str, ...]:
    """The IDs of the deployments `make up` registers (a benchmark's own deployment is not one)."""
    return tuple(sorted(d["id"] for d in api.call("POST", "/deployments/filter", json={}).json()
                        if d.get("name") in DEPLOYED))


def still_registered(record: DeployRecord | None, current: str, api: DeploymentApi) -> bool:
    """Whether the last deploy stands: same sources, and the server still has each deployment."""
    if record is None or record.fingerprint != current or not record.deployment_ids:
        return False
    try:
        return set(record.deployment_ids) <= set(deployment_ids(api))
    except IntegrationError:
        return False


def api_ca_env(api_url: str, kubeconfig: Path, run_dir: Path) -> dict[str, str]:
    """For a plain-http API: PREFECT_API_SSL_CERT_FILE naming a one-certificate bundle (the
    sandbox's own CA). No certificate is ever checked over http, but Prefect's client loads
    the bundle this setting names (certifi's ~140 certificates by default) for every client it
    makes, and `prefect deploy` makes about four per deployment: with certifi it took 18.8
    CPU-s, with one certificate 9.3. Over https nothing is changed."""
    if not api_url.startswith("http://") or not kubeconfig.exists():
        return {}
    config = yaml.safe_load(kubeconfig.read_text()) or {}
    clusters = config.get("clusters") or [{}]
    data = (clusters[0].get("cluster") or {}).get("certificate-authority-data")
    if not data:
        return {}
    bundle = run_dir / "prefect-api-ca.pem"
    bundle.parent.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(base64.b64decode(data))
    return {"PREFECT_API_SSL_CERT_FILE": str(bundle)}


def deploy_if_changed(root: Path, api: DeploymentApi, record_path: Path, run_deploy: Callable[[], None],
                      say: Callable[[str, str], None]) -> None:
    """Run `run_deploy` unless the last deploy's record still stands; record what it registered."""
    current = fingerprint(root, api.url)
    if os.environ.get("RUNBOOKS_REDEPLOY") != "1" and still_registered(DeployRecord.load(record_path), current, api):
        say("deployments", "unchanged since the last deploy (RUNBOOKS_REDEPLOY=1 deploys anyway)")
        return
    run_deploy()
    DeployRecord(current, deployment_ids(api)).save(record_path)
