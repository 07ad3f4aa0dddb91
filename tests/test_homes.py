"""Where code lives: what a production install imports (the flows, the worker, the intake with
its approval page and Slack and PagerDuty endpoints, the CLI) touches neither the simulated
world (`sandbox`) nor the developer tooling (`devstack`)."""

from __future__ import annotations

import subprocess
import sys

PRODUCTION = ["flows.service_down", "flows.high_error_rate", "flows.database_issues", "flows.security_incident",
              "flows.incident_watch", "flows.post_incident", "flows.incident_drill", "deployments.intake",
              "deployments.approval_page", "deployments.slack_interactions", "deployments.pagerduty_webhooks",
              "deployments.warm_worker", "deployments.cli"]


def test_production_modules_import_nothing_from_the_sandbox_or_the_dev_stack():
    probe = ("import importlib, sys\n"
             f"for name in {PRODUCTION!r}:\n"
             "    importlib.import_module(name)\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'sandbox', 'devstack'}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
