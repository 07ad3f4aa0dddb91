"""`runbooks check-config FILE --against prefect.yaml`: both shipped configs pass; a broken copy
fails, naming the line of each problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deployments.cli import main
from incidents.config_check import deployment_names

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = ROOT / "config" / "example-production.yaml"
PREFECT_YAML = str(ROOT / "prefect.yaml")


def _check(capsys, path: Path, *extra: str) -> tuple[int, str]:
    code = main(["check-config", str(path), "--against", PREFECT_YAML, *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("config", ["sandbox.yaml", "example-production.yaml"])
def test_the_shipped_configs_pass(capsys, config):
    code, out = _check(capsys, ROOT / "config" / config)
    assert code == 0 and out.rstrip().endswith("OK against " + PREFECT_YAML), out


def test_prefect_yaml_deploys_every_scenario_and_lifecycle_flow_for_production():
    names = deployment_names(Path(PREFECT_YAML).read_text())
    for flow in ("service-down", "high-error-rate", "database-issues", "security-incident", "incident-watch",
                 "acknowledge-incident", "resolve-incident", "post-incident", "incident-metrics"):
        assert f"{flow}/production" in names and f"{flow}/sandbox" in names, flow


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = PRODUCTION.read_text()
    assert old in text, old
    path = tmp_path / "broken.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("old, new, says, line_holds", [
    ("  - match: {alertname: HighErrorRate, environment: production}\n    scenario: high-error-rate\n", "",
     "no route starts high-error-rate", "routing:"),
    ("  - match: {alertname: DatabaseIssues, environment: production}",
     "  - match: {alertname: DatabaseIssues, environment: staging}",
     "starts database-issues/staging, which prefect.yaml",
     "alertname: DatabaseIssues"),
    ('        "@acme/comms": {group: S0123COMMS}\n', "", "communications is @acme/comms, who has no entry",
     "communications:"),
    ("        - {name: oncall-secondary, credential_secret: approver-oncall-secondary, slack_user: U0123SECONDARY}\n"
     "        - {name: sre-lead, credential_secret: approver-sre-lead, slack_user: U0123LEAD}\n", "",
     "four_eyes for P0 needs at least two approvers allowed to approve P0", "approval:"),
])
def test_a_broken_copy_fails_naming_the_line(capsys, tmp_path, old, new, says, line_holds):
    path = _broken(tmp_path, old, new)
    code, out = _check(capsys, path)
    assert code == 1, out
    found = [row for row in out.splitlines() if says in row]
    assert found, out
    reported = int(re.search(r": line (\d+): ", found[0])[1])
    assert line_holds in path.read_text().splitlines()[reported - 1], (reported, found[0])


def test_resolve_names_each_secret_that_cannot_be_resolved(capsys, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # no Secret blocks to be found
    for name in ("GITHUB_TOKEN", "SLACK_BOT_TOKEN", "APPROVER_ONCALL_PRIMARY", "APPROVER_ONCALL_SECONDARY",
                 "APPROVER_SRE_LEAD", "PAGERDUTY_SRE_PRIMARY", "SLACK_WEBHOOK_URL", "API_DATABASE_URL",
                 "API_CACHE_URL"):
        monkeypatch.setenv(f"RUNBOOKS_SECRET_{name}", "value-of-a-secret")
    monkeypatch.delenv("RUNBOOKS_SECRET_PAGERDUTY_SRE_LEADS", raising=False)
    code, out = _check(capsys, PRODUCTION, "--resolve")
    assert code == 1 and "secret 'pagerduty-sre-leads' not found" in out, out
    assert out.count("not found") == 1 and "value-of-a-secret" not in out, out


def test_connect_says_when_the_cluster_cannot_be_reached(capsys, tmp_path):
    text = PRODUCTION.read_text().replace("      kubeconfig: null\n", f"      kubeconfig: {tmp_path}/missing\n", 1)
    path = tmp_path / "unreachable.yaml"
    path.write_text(text)
    code, out = _check(capsys, path, "--connect")
    assert code == 1 and "production: Kubernetes unreachable" in out, out


@pytest.mark.unit
def test_the_example_config_is_the_production_overlays_config():
    """kustomize reads only files below the overlay, so the overlay holds the config and
    config/ holds a copy (not a link: links do not survive every checkout or archive)."""
    overlay = ROOT / "deploy" / "kubernetes" / "overlays" / "production" / "runbooks.yaml"
    assert not PRODUCTION.is_symlink()
    assert PRODUCTION.read_text() == overlay.read_text(), (
        f"edit both: cp {overlay.relative_to(ROOT)} {PRODUCTION.relative_to(ROOT)}")
