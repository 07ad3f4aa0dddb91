"""The held-out set (incidents/held_out.py): combinations the catalog does not list, from the
same steps, with outcomes derived by the rules written down in that module."""

from __future__ import annotations

from incidents.drills import CATALOG, HARMFUL_WHEN_UNNEEDED, REMEDY
from incidents.held_out import _shape, expected_remedies, generate
from tasks.faults import _INJECT


def test_forty_distinct_combinations_none_of_them_in_the_catalog_and_the_same_for_a_seed():
    specs = generate(40)
    assert len(specs) == 40 and len({_shape(s) for s in specs}) == 40
    assert not {_shape(s) for s in specs} & {_shape(s) for s in CATALOG.values()}
    assert [s.name for s in generate(40)] == [s.name for s in specs]
    assert [s.name for s in generate(40, seed=5)] != [s.name for s in specs]
    assert not {s.name for s in specs} & set(CATALOG)


def test_the_set_mixes_what_the_issue_asks_for():
    specs = generate(40)
    assert sum(s.faults >= 2 for s in specs) >= 10  # two faults
    assert sum(s.decoy_release for s in specs) >= 15  # a healthy release before or during
    assert sum(any(st.kind == "other_broken" for st in s.steps) for s in specs) >= 5  # another service broken
    assert {s.scenario for s in specs} == {"high-error-rate", "service-down", "database-issues"}
    assert any(st.after_seconds for s in specs for st in s.steps)  # gaps


def test_every_step_can_be_injected_and_every_outcome_is_a_remedy_set():
    for spec in generate(60):
        assert {st.kind for st in spec.steps} <= set(_INJECT), spec
        assert spec.outcome == REMEDY and spec.expected, spec


def test_the_rules_written_down():
    er, sd = "high-error-rate", "service-down"
    assert expected_remedies(er, ("erroring-release", "overload")) == {"rollback", "scale"}
    assert expected_remedies(er, ("erroring-release", "erroring-release")) == {"rollback"}
    assert expected_remedies(er, ("erroring-release", "dependency")) == {"circuit_breaker"}  # rule 2
    assert expected_remedies(sd, ("crash-release", "crash-release")) == {"rollback"}
    db = "database-issues"
    assert expected_remedies(db, ("lock", "cache-full")) == {"terminate_sessions", "clear_cache"}  # rule 6
    assert expected_remedies(db, ("connections",)) == {"terminate_sessions"}
    for spec in generate(60):  # rule 3: a healthy release or another service never adds a harmful remedy
        bad_release = any(st.kind == "release" and st.is_fault for st in spec.steps)
        assert bad_release or "rollback" not in spec.expected, spec
        assert spec.expected & HARMFUL_WHEN_UNNEEDED <= {"rollback", "terminate_sessions", "clear_cache"}, spec
        if {"pg_lock", "pg_connections"} <= {st.kind for st in spec.steps}:  # rule 6
            raise AssertionError(f"a lock and connection pressure together cannot both be staged: {spec}")
