"""The playbook's Success Metrics, daily: MTTD, MTTA and MTTR by severity, incidents per
month and post-mortem completion, each against its target, as a table and a trend chart."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.metrics import publish_metrics


@flow(name="incident-metrics", description="MTTD, MTTA, MTTR by severity, incident frequency and post-mortem "
                                           "completion against the playbook's targets.")
def incident_metrics(environment: str = "sandbox") -> dict[str, Any]:
    """Args:
        environment: whose incident record is measured.
    """
    return publish_metrics(environment).as_json()
