"""`make up` deploys prefect.yaml's deployments again only when something they are made of changed
(devstack/deploying.py), and makes `prefect deploy` load a one-certificate bundle over plain http."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.deploying import DeployRecord, api_ca_env, deploy_if_changed, fingerprint, still_registered
from integrations.errors import IntegrationError

API = "http://127.0.0.1:4200/api"


class Deployments:
    """The Prefect API's deployment filter, holding the deployments registered so far."""

    def __init__(self, url: str = API) -> None:
        self.url, self.down = url, False
        self.ids: list[str] = []
        self.others: list[str] = []  # deployments of other names (a benchmark's)

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        assert (method, path) == ("POST", "/deployments/filter")
        if self.down:
            raise IntegrationError("Prefect POST /deployments/filter", "connection refused", transient=True)
        return httpx.Response(200, json=[*({"id": i, "name": "sandbox"} for i in self.ids),
                                          *({"id": i, "name": "sandbox-load"} for i in self.others)])


def _project(root: Path) -> Path:
    (root / "flows").mkdir(parents=True)
    (root / "incidents").mkdir()
    (root / "prefect.yaml").write_text("deployments: []\n")
    (root / "flows" / "service_down.py").write_text("def service_down(): ...\n")
    (root / "incidents" / "alerts.py").write_text("class AlertParameter: ...\n")
    return root


def test_the_fingerprint_follows_the_deployments_sources_not_their_timestamps(tmp_path):
    root = _project(tmp_path)
    first = fingerprint(root, API)
    (root / "flows" / "service_down.py").touch()
    assert fingerprint(root, API) == first
    assert fingerprint(root, "http://127.0.0.1:24200/api") != first
    for changed in ("prefect.yaml", "flows/service_down.py", "incidents/alerts.py"):
        path = root / changed
        before = path.read_text()
        path.write_text(before + "# changed\n")
        assert fingerprint(root, API) != first, changed
        path.write_text(before)
    (root / "flows" / "drill.py").write_text("def drill(): ...\n")
    assert fingerprint(root, API) != first


def test_a_record_reads_back_and_an_unreadable_one_is_none(tmp_path):
    path = tmp_path / ".run" / "deployed.json"
    DeployRecord("abc", ("d1", "d2")).save(path)
    assert DeployRecord.load(path) == DeployRecord("abc", ("d1", "d2"))
    path.write_text("{not json")
    assert DeployRecord.load(path) is None
    assert DeployRecord.load(tmp_path / "missing.json") is None


def test_the_last_deploy_stands_only_with_the_same_sources_and_every_deployment_still_there():
    api = Deployments()
    api.ids = ["d1", "d2", "d3"]
    assert still_registered(DeployRecord("f", ("d1", "d2")), "f", api)
    assert not still_registered(None, "f", api)
    assert not still_registered(DeployRecord("f", ()), "f", api)
    assert not still_registered(DeployRecord("old", ("d1", "d2")), "f", api)
    assert not still_registered(DeployRecord("f", ("d1", "d9")), "f", api)  # deleted, or the database dropped
    api.down = True
    assert not still_registered(DeployRecord("f", ("d1", "d2")), "f", api)


def test_up_deploys_the_first_time_then_not_until_a_source_changes_or_it_is_asked(tmp_path, monkeypatch):
    root, api, said = _project(tmp_path / "project"), Deployments(), []
    record = tmp_path / ".run" / "deployed.json"
    deploys: list[int] = []

    def deploy() -> None:
        deploys.append(1)
        api.ids = [f"d{len(deploys)}-{n}" for n in range(3)]  # a deploy after a dropped database: new ids

    def up() -> None:
        deploy_if_changed(root, api, record, deploy, lambda step, message: said.append(message))

    monkeypatch.delenv("RUNBOOKS_REDEPLOY", raising=False)
    api.others = ["load-1"]  # a benchmark's deployment, deleted by the benchmark later
    up()
    api.others = []
    up()
    assert len(deploys) == 1 and "unchanged since the last deploy" in said[-1]
    assert DeployRecord.load(record).deployment_ids == tuple(sorted(api.ids))
    (root / "prefect.yaml").write_text("deployments: [{}]\n")
    up()
    assert len(deploys) == 2
    api.ids = []  # `make clean` dropped Prefect's database
    up()
    assert len(deploys) == 3
    monkeypatch.setenv("RUNBOOKS_REDEPLOY", "1")
    up()
    assert len(deploys) == 4


def test_a_failed_deploy_leaves_no_record_so_the_next_up_deploys_again(tmp_path):
    root, api, record = _project(tmp_path / "project"), Deployments(), tmp_path / "deployed.json"

    def failing() -> None:
        raise RuntimeError("prefect deploy failed")

    with pytest.raises(RuntimeError):
        deploy_if_changed(root, api, record, failing, lambda step, message: None)
    assert not record.exists()


def test_plain_http_gets_the_sandbox_ca_as_the_bundle_and_https_keeps_its_own(tmp_path):
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"clusters": [{"name": "sandbox", "cluster": {
        "server": "https://127.0.0.1:8791", "certificate-authority-data": base64.b64encode(pem).decode()}}]}))
    env = api_ca_env(API, kubeconfig, tmp_path / ".run")
    assert Path(env["PREFECT_API_SSL_CERT_FILE"]).read_bytes() == pem
    assert api_ca_env("https://prefect.example.com/api", kubeconfig, tmp_path / ".run") == {}
    assert api_ca_env(API, tmp_path / "no-kubeconfig", tmp_path / ".run") == {}


def test_make_up_stores_only_the_sandbox_credentials_it_supplies(monkeypatch):
    """A credential from the caller's shell (a real token, another environment's database) is
    never written to the Prefect database as a Secret block; the sandbox's fake ones are."""
    import devstack.stack as stack

    monkeypatch.setattr(stack, "approver_credentials", lambda: {"sam": "sandbox-credential"})
    env = {**stack.sandbox_secrets(), "RUNBOOKS_SECRET_GITHUB_TOKEN": "ghp_from_the_shell",
           "RUNBOOKS_SECRET_PROD_DATABASE_URL": "postgresql://prod", "RUNBOOKS_ALERT_TOKEN": "t"}
    stored, skipped = stack.secret_blocks(env)
    assert skipped == ["github-token"]
    assert "ghp_from_the_shell" not in stored.values() and "prod-database-url" not in stored
    assert stored["approver-sam"] == "sandbox-credential"
    assert stored["slack-bot-token"] == stack.sandbox_secrets()["RUNBOOKS_SECRET_SLACK_BOT_TOKEN"]
