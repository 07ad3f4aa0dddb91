"""The scenario flows' `alert` parameter as a model: the same JSON object the pinned interface
names (`alert: dict or None`) is accepted from the API, the UI's form and the intake, keeps
what it carried, and a value no alert can have is refused with the field named."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from incidents.alerts import Alert, AlertParameter

START = "2026-11-29T00:01:02Z"
# what the intake sent as the parameter before the model (Alert.as_parameter plus the route's key)
INTAKE_JSON: dict[str, Any] = {"source": "alertmanager", "status": "firing", "fingerprint": "0f3c2a9e1b7d4c55",
               "startsAt": START, "labels": {"alertname": "ServiceDown", "service": "api", "environment": "sandbox"},
               "annotations": {"summary": "api is down"}, "generatorURL": "http://prometheus/graph",
               "correlation_key": "sandbox/api"}


def _flows():
    from flows.database_issues import database_issues
    from flows.high_error_rate import high_error_rate
    from flows.security_incident import security_incident
    from flows.service_down import service_down

    return [service_down, high_error_rate, database_issues, security_incident]


def test_the_intake_sends_the_same_json_as_before():
    alert = Alert("alertmanager", "firing", INTAKE_JSON["fingerprint"], START, INTAKE_JSON["labels"],
                  INTAKE_JSON["annotations"], INTAKE_JSON["generatorURL"])
    assert alert.as_parameter("sandbox/api").as_dict() == INTAKE_JSON


@pytest.mark.parametrize("given", [
    INTAKE_JSON,
    {"labels": {"alertname": "ServiceDown"}},  # typed by hand in the UI
    {**INTAKE_JSON, "endsAt": "0001-01-01T00:00:00Z", "valueString": "[ var='A' value=1 ]"},  # Grafana's extras
])
def test_every_scenario_flow_takes_the_same_json_and_keeps_it(given):
    for scenario in _flows():
        schema = parameter_schema(scenario.fn).model_dump()
        assert validate({"service": "api", "alert": given}, schema, raise_on_error=True) == []
        alert = scenario.validate_parameters({"service": "api", "alert": given})["alert"]
        assert isinstance(alert, AlertParameter) and alert.as_dict() == given
    assert _flows()[0].validate_parameters({"service": "api"}).get("alert") is None


def test_readers_get_typed_fields():
    alert = AlertParameter.model_validate(INTAKE_JSON)
    assert alert.started == datetime(2026, 11, 29, 0, 1, 2, tzinfo=timezone.utc)
    assert alert.name == "ServiceDown" and alert.identity == (INTAKE_JSON["fingerprint"], START)
    assert AlertParameter(starts_at="0001-01-01T00:00:00Z").started is None  # Alertmanager's "not known"
    assert AlertParameter(starts_at="yesterday").started is None


@pytest.mark.parametrize("given, field", [
    ({"labels": {"service": 7}}, "alert.labels.service"),
    ({"status": "pending"}, "alert.status"),
    ({"labels": "service=api"}, "alert.labels"),
])
def test_a_value_no_alert_can_have_is_refused_naming_the_field(given, field):
    schema = parameter_schema(_flows()[0].fn).model_dump()
    with pytest.raises(Exception, match=field.replace(".", r"\.")):
        validate({"service": "api", "alert": given}, schema, raise_on_error=True)
