"""Logs a machine can read: with RUNBOOKS_LOG_FORMAT=json the intake, the warm worker and each
run's process write one JSON object a line to their console stream: time, level, component,
logger, incident, run and message (redacted), and `exc` for a traceback. The default, `text`,
leaves the format as it was. Prefect's API log handler (the run's logs in the UI) is left
alone either way."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone

from incidents.errors import RunbookError
from incidents.redaction import redact

FORMATS = ("text", "json")
ENV = "RUNBOOKS_LOG_FORMAT"


class LogFormatError(RunbookError, ValueError):
    """RUNBOOKS_LOG_FORMAT names no format this project writes."""


def configured_format() -> str:
    value = (os.environ.get(ENV) or "text").strip().lower()
    if value not in FORMATS:
        raise LogFormatError(f"{ENV}={os.environ.get(ENV)!r} is not a log format; use one of {', '.join(FORMATS)}")
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object a line. The incident and run come from the record (`extra=` or Prefect's
    run logger, which carries flow_run_id), else from the process's run (its flow-run id)."""

    def __init__(self, component: str):
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "incident": _incident_of(record),
            "run": _run_of(record),
            "message": redact(record.getMessage()),
        }
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


def _incident_of(record: logging.LogRecord) -> int | None:
    from tasks.telemetry import current_incident

    value = getattr(record, "incident", None)
    return int(value) if value is not None else current_incident.get()


def _run_of(record: logging.LogRecord) -> str | None:
    value = getattr(record, "run", None) or getattr(record, "flow_run_id", None)
    return str(value) if value else os.environ.get("PREFECT__FLOW_RUN_ID") or None


def apply(component: str, handlers: list[logging.Handler] | None = None) -> str:
    """Give every console handler of the process's loggers (or these) the configured format;
    returns it. Raises LogFormatError for a misspelt value (a process refuses to start on it)."""
    chosen = configured_format()
    if chosen == "json":
        formatter = JsonFormatter(component)
        for handler in console_handlers() if handlers is None else handlers:
            handler.setFormatter(formatter)
    return chosen


def console_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    found: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                found[id(handler)] = handler
    return list(found.values())
