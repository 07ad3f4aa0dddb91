"""The playbook's Success Metrics, computed from the incident record.

Every duration counts from when the problem began: the alert's `startsAt` when an alert
started the incident, else the moment the runbook opened it.

- MTTD (time to detect): start -> the runbook run opened the incident. Only incidents that an
  alert started are counted (a manual run, or a person's `/incident declare`, has no
  independent start).
- MTTA (time to acknowledge): start -> the first acknowledgment (an approval decided by a
  person, or an explicit acknowledge). Incidents nobody acknowledged are left out and counted.
- MTTR (time to recover): start -> verified recovery. Open incidents are left out and counted.
- Incident frequency: incidents per calendar month (UTC) of their start.
- Post-mortem completion: of the resolved incidents whose week has passed (or whose
  post-mortem is done), the share with a post-mortem completed within the week.
- 24-hour summaries: of the summaries drafted at resolution whose day has passed (or that
  were sent), the share the Communications lead sent within the day.

Drills are real runs of the runbooks but not incidents: they are excluded and counted.
Targets: MTTD < 5 min, MTTR < 30 min for P0, < 1 incident per month, 100 % post-mortems within
a week, 100 % 24-hour summaries within the day; MTTA is held against the severity's response
time in the Escalation Matrix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from statistics import mean
from typing import Any

from incidents.vocabulary import DetectedBy

SEVERITIES = ("P0", "P1", "P2", "P3")
MTTD_TARGET = timedelta(minutes=5)
MTTR_TARGET_P0 = timedelta(minutes=30)
POSTMORTEM_WITHIN = timedelta(days=7)
MONTHLY_TARGET = 1


@dataclass(frozen=True)
class MetricRow:
    """One incident as the metrics read it (FollowUpStore.metric_rows)."""

    id: int
    severity: str
    detected_by: DetectedBy | str
    from_alert: bool
    drill: bool
    started_at: datetime  # when the problem began: the alert's startsAt, else the opening
    opened_at: datetime
    acknowledged_at: datetime | None
    recovered_at: datetime | None
    resolved_at: datetime | None
    postmortem_at: datetime | None  # the post-mortem's completion
    summary_due: datetime | None = None  # the 24-hour summary's due time (drafted at resolution)
    summary_at: datetime | None = None  # when the Communications lead said it was sent


@dataclass
class Figure:
    metric: str
    scope: str
    value: float | None  # minutes, a count, or a percentage
    unit: str
    target: str
    met: bool | None
    counted: int
    left_out: int = 0

    def row(self) -> dict[str, Any]:
        if self.value is None:
            shown = "-"
        elif not self.unit:  # a count
            shown = f"{self.value:g}"
        else:
            shown = f"{self.value:.1f} {self.unit}"
        return {"metric": self.metric, "scope": self.scope, "value": shown, "target": self.target,
                "met": {True: "yes", False: "NO", None: "-"}[self.met], "counted": self.counted,
                "left out": self.left_out}


@dataclass(frozen=True)
class Month:
    """One month of the trend: the incidents that started in it, and their MTTR in minutes (None:
    none has recovered)."""

    incidents: int
    mttr_minutes: float | None


@dataclass
class Metrics:
    figures: list[Figure] = field(default_factory=list)
    months: dict[str, Month] = field(default_factory=dict)  # "2026-11" -> that month, oldest first
    drills_excluded: int = 0

    def figure(self, metric: str, scope: str) -> Figure:
        return next(f for f in self.figures if f.metric == metric and f.scope == scope)

    def rows(self) -> list[dict[str, Any]]:
        """The figures as the table's rows (the metrics artifact, `runbooks metrics`)."""
        return [f.row() for f in self.figures]

    def as_json(self) -> dict[str, Any]:
        """The figures, the months and the drills left out, as the flow's result and `--json` give them."""
        return {"figures": self.rows(), "months": {key: asdict(month) for key, month in self.months.items()},
                "drills_excluded": self.drills_excluded}


def _minutes(deltas: list[timedelta]) -> float | None:
    return round(mean(d.total_seconds() for d in deltas) / 60, 2) if deltas else None


def compute(rows: list[MetricRow], now: datetime, response_minutes: dict[str, float]) -> Metrics:
    """Metrics for `rows` (FollowUpStore.metric_rows) as of `now`."""
    metrics = Metrics()
    incidents = [r for r in rows if not r.drill]
    metrics.drills_excluded = len(rows) - len(incidents)
    for scope in ("all", *SEVERITIES):
        chosen = [r for r in incidents if scope == "all" or r.severity == scope]
        if not chosen and scope != "all":
            continue
        alerted = [r for r in chosen if r.from_alert]
        mttd = _minutes([r.opened_at - r.started_at for r in alerted])
        metrics.figures.append(Figure("MTTD", scope, mttd, "min", "< 5 min",
                                      None if mttd is None else mttd < MTTD_TARGET.total_seconds() / 60,
                                      len(alerted), len(chosen) - len(alerted)))
        acked = [r for r in chosen if r.acknowledged_at]
        mtta = _minutes([a - r.started_at for r in acked if (a := r.acknowledged_at)])
        limit = response_minutes.get(scope)
        metrics.figures.append(Figure("MTTA", scope, mtta, "min", f"< {limit:g} min" if limit else "-",
                                      None if mtta is None or not limit else mtta < limit,
                                      len(acked), len(chosen) - len(acked)))
        recovered = [r for r in chosen if r.recovered_at]
        mttr = _minutes([at - r.started_at for r in recovered if (at := r.recovered_at)])
        p0 = scope == "P0"
        metrics.figures.append(Figure("MTTR", scope, mttr, "min", "< 30 min" if p0 else "-",
                                      None if mttr is None or not p0 else mttr < MTTR_TARGET_P0.total_seconds() / 60,
                                      len(recovered), len(chosen) - len(recovered)))

    _add_months(metrics, incidents)

    due = [
        r for r in incidents if r.resolved_at and (r.postmortem_at or r.resolved_at + POSTMORTEM_WITHIN <= now)
    ]
    on_time = [r for r in due
               if r.postmortem_at and r.resolved_at and r.postmortem_at - r.resolved_at <= POSTMORTEM_WITHIN]
    share = round(100 * len(on_time) / len(due), 1) if due else None
    pending = len([r for r in incidents if r.resolved_at]) - len(due)
    metrics.figures.append(Figure("Post-mortems within a week", "all", share, "%", "100 %",
                                  None if share is None else share == 100.0, len(due), pending))
    drafted = [r for r in incidents if r.summary_due]
    summaries = [r for r in drafted if r.summary_at or (r.summary_due and r.summary_due <= now)]
    sent = [r for r in summaries if r.summary_at and r.summary_due and r.summary_at <= r.summary_due]
    share = round(100 * len(sent) / len(summaries), 1) if summaries else None
    metrics.figures.append(Figure("24-hour summaries sent on time", "all", share, "%", "100 %",
                                  None if share is None else share == 100.0, len(summaries),
                                  len(drafted) - len(summaries)))
    return metrics


def _add_months(metrics: Metrics, incidents: list[MetricRow]) -> None:
    """The incidents per month (a figure each, against the playbook's "fewer than one") and each
    month's MTTR, oldest month first."""
    recoveries: dict[str, list[timedelta]] = {}
    for r in incidents:
        recovered = recoveries.setdefault(f"{r.started_at:%Y-%m}", [])
        if r.recovered_at:
            recovered.append(r.recovered_at - r.started_at)
    for key in sorted(recoveries):
        count = sum(1 for r in incidents if f"{r.started_at:%Y-%m}" == key)
        metrics.months[key] = Month(count, _minutes(recoveries[key]))
        metrics.figures.append(Figure("Incidents per month", key, count, "", "< 1", count < MONTHLY_TARGET, count))


def trend_svg(months: dict[str, Month], width: int = 640, height: int = 260) -> str:
    """A chart of the trend per month: incidents (bars, left axis) and MTTR in minutes (line,
    right axis, with the P0 target of 30 min dashed). Plain SVG, no plotting library."""
    left, right, top, bottom = 48, 56, 28, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    keys = list(months) or ["(no incidents)"]
    counts = [months[k].incidents if k in months else 0 for k in keys]
    mttrs = [months[k].mttr_minutes if k in months else None for k in keys]
    max_count = int(max([*counts, MONTHLY_TARGET, 1]))
    max_mttr: float = max([m for m in mttrs if m is not None] + [MTTR_TARGET_P0.total_seconds() / 60]) * 1.15
    step = plot_w / len(keys)

    def y_count(value: float) -> float:
        return top + plot_h - plot_h * value / max_count

    def y_mttr(value: float) -> float:
        return top + plot_h - plot_h * value / max_mttr

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">Incidents per month and MTTR</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
             f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>']
    for tick in range(0, max_count + 1, max(1, max_count // 5)):
        parts.append(f'<text x="{left - 6}" y="{y_count(tick) + 4:.1f}" text-anchor="end">{tick}</text>')
    for minutes in (0.0, MTTR_TARGET_P0.total_seconds() / 60, float(round(max_mttr))):
        parts.append(f'<text x="{left + plot_w + 6}" y="{y_mttr(minutes) + 4:.1f}">{minutes:g}m</text>')
    parts.append(f'<line x1="{left}" y1="{y_mttr(30):.1f}" x2="{left + plot_w}" y2="{y_mttr(30):.1f}" '
                 'stroke="#c0392b" stroke-dasharray="4 3"/>')
    points = []
    for i, (key, count, mttr) in enumerate(zip(keys, counts, mttrs)):
        x = left + i * step
        bar_h = top + plot_h - y_count(count)
        parts.append(f'<rect x="{x + step * 0.2:.1f}" y="{y_count(count):.1f}" width="{step * 0.6:.1f}" '
                     f'height="{bar_h:.1f}" fill="#5b8def"><title>{key}: {count} incidents</title></rect>')
        parts.append(f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{key}</text>')
        if mttr is not None:
            points.append(f"{x + step / 2:.1f},{y_mttr(mttr):.1f}")
            parts.append(f'<circle cx="{x + step / 2:.1f}" cy="{y_mttr(mttr):.1f}" r="3.5" fill="#e67e22">'
                         f'<title>{key}: MTTR {mttr:g} min</title></circle>')
    if len(points) > 1:
        parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="#e67e22" stroke-width="2"/>')
    parts.append(f'<text x="{left}" y="{height - 8}" fill="#5b8def">■ incidents (left)</text>'
                 f'<text x="{left + 130}" y="{height - 8}" fill="#e67e22">● MTTR, minutes (right)</text>'
                 f'<text x="{left + 300}" y="{height - 8}" fill="#c0392b">- - P0 MTTR target 30 min</text>')
    parts.append("</svg>")
    return "".join(parts)
