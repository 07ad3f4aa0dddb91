"""RUNBOOKS_LOG_FORMAT=json: one JSON object a line with time, level, component, logger, incident,
run and message, redacted; a misspelt value is refused; `text` changes nothing."""

from __future__ import annotations

import io
import json
import logging

import pytest

from deployments import log_format
from tasks import telemetry


@pytest.fixture
def stream_logger():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("runbooks.test-log-format")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, stream, handler
    logger.removeHandler(handler)


def test_json_lines_carry_the_fields_and_are_redacted(monkeypatch, stream_logger):
    logger, stream, handler = stream_logger
    monkeypatch.setenv("RUNBOOKS_LOG_FORMAT", "json")
    monkeypatch.setenv("PREFECT__FLOW_RUN_ID", "7f0c1d2e-0000-4000-8000-000000000001")
    assert handler in log_format.console_handlers()  # what a process's apply() formats
    assert log_format.apply("worker", [handler]) == "json"
    token = telemetry.current_incident.set(42)
    try:
        logger.info("connecting with postgresql://app:hunter2@db:5432/app and token xoxb-123456789012-abcdefabcdef")
        try:
            raise RuntimeError("password=hunter2 refused")
        except RuntimeError:
            logger.exception("step failed")
        logger.warning("alert started a run", extra={"incident": 7, "run": "run-7"})
    finally:
        telemetry.current_incident.reset(token)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, failed, explicit = lines
    assert set(first) == {"time", "level", "component", "logger", "incident", "run", "message"}
    assert (first["level"], first["component"], first["logger"]) == ("INFO", "worker", "runbooks.test-log-format")
    assert (first["incident"], first["run"]) == (42, "7f0c1d2e-0000-4000-8000-000000000001")
    assert "hunter2" not in stream.getvalue() and "xoxb-123456789012" not in stream.getvalue()
    assert "RuntimeError" in failed["exc"] and failed["level"] == "ERROR"
    assert (explicit["incident"], explicit["run"]) == (7, "run-7")
    assert first["time"].endswith("+00:00")


def test_text_leaves_the_format_alone(monkeypatch, stream_logger):
    logger, stream, handler = stream_logger
    monkeypatch.delenv("RUNBOOKS_LOG_FORMAT", raising=False)
    assert log_format.apply("intake", [handler]) == "text"
    logger.info("plain")
    assert stream.getvalue() == "INFO plain\n"


def test_a_misspelt_format_is_refused_and_changes_nothing(monkeypatch, stream_logger):
    logger, stream, handler = stream_logger
    monkeypatch.setenv("RUNBOOKS_LOG_FORMAT", "jsno")
    with pytest.raises(log_format.LogFormatError, match="jsno.*text, json"):
        log_format.apply("intake", [handler])
    logger.info("still plain")
    assert stream.getvalue() == "INFO still plain\n"
