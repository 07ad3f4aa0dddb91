"""The Success Metrics as Prefect artifacts: a table against the playbook's targets and a
chart of the trend per month."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from incidents.config import load_environment
from incidents.success_metrics import Metrics, compute, trend_svg
from tasks.context import PRODUCTION, Wiring
from tasks.steps import step


def measure(environment: str, now: datetime | None = None, since: datetime | None = None,
            wiring: Wiring = PRODUCTION) -> Metrics:
    """Metrics of the environment's incident record as of `now` (used by the flow and the CLI)."""
    config = load_environment(environment)
    response = {s: config.escalation.policy(s).response_minutes for s in ("P0", "P1", "P2", "P3")}
    return compute(wiring.store().metric_rows(environment, since), now or datetime.now(timezone.utc), response)


@step("publish-metrics")
def publish_metrics(environment: str, now: datetime | None = None) -> Metrics:
    metrics = measure(environment, now)
    key = f"incident-metrics-{environment}"
    create_table_artifact(table=metrics.rows(), key=key,
                          description=f"Success metrics for {environment} against the playbook's targets "
                                      f"({metrics.drills_excluded} drills excluded)")
    svg = trend_svg(metrics.months)
    image = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    months = "\n".join(f"| {m} | {v.incidents} | {'-' if v.mttr_minutes is None else v.mttr_minutes} |"
                       for m, v in metrics.months.items()) or "| - | 0 | - |"
    create_markdown_artifact(
        key=f"{key}-trend",
        description=f"Incidents and MTTR per month ({environment})",
        markdown=f"## Trend per month ({environment})\n\n![Incidents and MTTR per month]({image})\n\n"
        f"| Month | Incidents | MTTR (min) |\n|---|---|---|\n{months}\n",
    )
    return metrics
