"""What a scenario supplies to the lifecycle (tasks/lifecycle.py): what it diagnoses, how it
plans and verifies, whom it hands over to; and the phases where a run reaches past the
lifecycle's own logic, which a test may replace."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from incidents.findings import Finding
from incidents.models import Incident, Severity
from incidents.plans import Grant, Plan
from tasks.approval import Ask, wait_for_answer
from tasks.context import RunContext
from tasks.deploys import ActionResult, Verification
from tasks.incident import open_incident
from tasks.remedies import execute


@dataclass(frozen=True)
class Phases:
    """Where the lifecycle reaches past its own logic at a phase boundary: opening the incident
    (submitted, so the read-only checks run meanwhile), asking a person (the run pauses), and
    running the approved actions. The defaults are the real ones; the fault matrix wraps `open`
    and `execute` to fault a dependency during that phase, and the unit tier answers `ask`."""

    open: Callable[..., Any] = open_incident.submit
    ask: Ask = wait_for_answer
    execute: Callable[[RunContext, Plan, Grant | None], list[ActionResult]] = execute


PHASES = Phases()


@dataclass(frozen=True)
class Scenario:
    name: str
    default_severity: Severity
    impact: str
    summary: Callable[[RunContext], str]
    diagnose: Callable[[RunContext], dict[str, Finding]]
    # the findings, and when the failure began (the alert's startsAt, None if unknown)
    plan: Callable[[RunContext, Incident, dict[str, Finding], datetime | None], Plan]
    verify: Callable[[RunContext, dict[str, Finding], Plan], Verification]
    root_cause: Callable[[dict[str, Finding], Plan], str]
    prevention: Callable[[dict[str, Finding], Plan], str]
    # runs right after diagnosis, before any plan is shown (e.g. to keep evidence)
    after_diagnosis: Callable[[RunContext, Incident, dict[str, Finding]], None] | None = None
    # scenarios this one hands over to when its plan names them (Plan.handover), e.g. a service
    # down whose /health names the database goes on with the database-issues diagnosis
    handovers: Mapping[str, "Scenario"] = field(default_factory=dict)
    phases: Phases = PHASES
