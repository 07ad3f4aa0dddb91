"""A drill's score (incidents/drills.py) as the typed Scorecard: graded from the runbook's
judgement, stored as JSON with the drill and read back as the same model, and rendered as the
scorecard and the history the drill publishes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from incidents.drills import history_markdown, resolve_fault, score, scorecard_markdown
from incidents.followup_models import Drill, Scorecard
from incidents.run_result import Judgement
from incidents.vocabulary import Confidence

INJECTED = datetime(2026, 12, 7, 3, 0, tzinfo=timezone.utc)


def _judgement(kinds: list[str], abstained: bool = False) -> Judgement:
    return Judgement(confidence=Confidence.STRONG, abstained=abstained, summary="s", kinds=kinds, support=[],
                     against=[])


def test_the_right_plan_that_recovered_in_time_passes_and_a_wrong_one_does_not():
    spec = resolve_fault("service-down")
    steps = list(spec.expected_steps) + ["resolved"]
    def at(**delta: float) -> datetime:
        return INJECTED + timedelta(**delta)

    right = score(spec, INJECTED, at(seconds=40), at(seconds=70), at(seconds=200), steps, "resolved",
                  _judgement(sorted(spec.expected)))
    assert isinstance(right, Scorecard) and right.passed and right.judgement == "right"
    assert (right.time_to_detect_s, right.time_to_approve_s, right.time_to_recover_s) == (40.0, 30.0, 200.0)
    assert right.mttd_met and right.mttr_met and all(right.steps.values()) and right.confidence == "strong"
    unplanned = score(spec, INJECTED, at(seconds=40), None, None, steps, "escalated", None)
    assert not unplanned.passed and unplanned.judgement is None and unplanned.planned == []


def test_a_score_is_stored_as_json_and_read_back_as_the_scorecard():
    spec = resolve_fault("service-down")
    card = score(spec, INJECTED, INJECTED + timedelta(seconds=30), None, None, [], "escalated", None)
    row = Drill("d-1", spec.name, spec.scenario, "sandbox", "api", "auto", 0.0, "failed", INJECTED,
                score=card.as_data())  # type: ignore[arg-type]  # the JSON column, as the store hands it
    assert row.score == card
    older = {**card.as_data(), "a_field_of_a_later_release": 1}
    older.pop("confidence")
    assert Scorecard.model_validate(older).confidence is None


def test_the_scorecard_and_the_history_render_from_the_model():
    spec = resolve_fault("service-down")
    card = score(spec, INJECTED, INJECTED + timedelta(seconds=42), None, None, [], "escalated", None)
    text = scorecard_markdown("d-1", "sandbox", card, ["image restored"])
    assert "❌ failed" in text and "42.0 s" in text and "no plan recorded" in text and "image restored" in text
    rows = [Drill("d-1", spec.name, spec.scenario, "sandbox", "api", "auto", 0.0, "failed", INJECTED, score=card),
            Drill("d-0", spec.name, spec.scenario, "sandbox", "api", "auto", 0.0, "running", INJECTED)]
    history = history_markdown(rows)
    assert f"| {spec.scenario} | 2 | 0 | 42.0 s | — |" in history
