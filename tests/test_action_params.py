"""Action parameters as one model per kind: today's stored shapes parse to the kind's model,
dump back to exactly the same dict, and keep the digests approval grants were issued over."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from incidents.action_params import (
    IngressDenylistBlock,
    NetworkPolicyBlock,
    RollbackByUndo,
    RollbackByWorkflow,
    Scale,
)
from incidents.plans import Grant, Plan, PlannedAction, require_grant
from incidents.vocabulary import SAFE_WHEN_UNSURE, ActionKind, Confidence, Safety, UnknownKind
from tests.action_samples import SAMPLES, sample_action

# The digests of SAMPLES' actions as the release before the models computed them (params as
# plain dicts): a grant issued then, or a plan stored then, still covers the same actions.
DIGESTS = {
    "rollback by undo": "051572aff42553c86cd7a3b80e9fdf3efcd25dd579a1cc2db87b26716a51f368",
    "rollback by workflow": "bc52ab531382477901a4ab941fea30638189001d7db25cfc80eff7319249e236",
    "restart at a revision": "644e43788c90ecb0c2f8f8eb9e9f27fa0e935fd7663376d5daefb5f69f1a2275",
    "restart of a database": "4ad32c5e172b3e18a27555ad799ac1c4f0147f78cb6f53a0f38c0210b0a5b391",
    "scale": "0e79c4cae2e685544297c93da47c83baa41086c0989e3deb90113c4a60cee1b1",
    "scale an hpa": "fbadb526f6ebd7526041e1fb933c57ded79129daa34706c8e2958a2cc4ab17c9",
    "circuit breaker": "e61cf91db259d669ed7a3ff05b352b63019cee01f24e4f6cef49597c8b862782",
    "terminate a root blocker": "b41bc745529dd8bc58ee3291e9a84d91c3308cc6d7d2e93287fab0aa4c0f0a8d",
    "cancel queries": "225e40d54b0b47c519bff2e51cc48b701b5e063868e249ddcbc8e13229d35482",
    "clear a prefix": "83654d58371c4b2c63e0c65221b5d3c903e15780dfc78e3231050fbdc5daeb1a",
    "rotate a secret": "1646b3cd3aa16d433428f23d5423bb8548b19d449bf6ba417166187b14b18c1a",
    "deny at the ingress": "5baedfa84908f9a6001e318d5abda3230826e36a600117e53eddd32f16414121",
    "block by policy": "c183a71a996a823f3a3a15d2cc1d5fda8778dd845860516778cfcccf939a84df",
    "raise the log level": "c2a10e0ef693d011c7cc2b9c5812975fe938ba1e6ed5c6e5dfce43453434bac1",
}


def _action(name: str) -> PlannedAction:
    return sample_action(name)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_stored_shape_parses_dumps_back_and_keeps_its_digest(name):
    action = _action(name)
    assert action.params.as_dict() == SAMPLES[name][1]
    assert action.digest == DIGESTS[name]
    again = PlannedAction(action.kind, "target", "before", "after", "via", action.params)
    assert again == action and again.digest == action.digest


def test_every_action_kind_has_a_model_a_remedy_a_re_check_a_safety_class_and_a_sample():
    from incidents.action_params import _BY_KIND
    from tasks.prechecks import CHECKS
    from tasks.remedies import REMEDIES

    kinds = set(ActionKind)
    assert set(_BY_KIND) == set(REMEDIES) == set(CHECKS) == {kind for kind, _ in SAMPLES.values()} == kinds
    assert {kind: kind.safety for kind in ActionKind}.keys() == kinds
    assert all(isinstance(kind.safety, Safety) for kind in ActionKind)
    # what weak evidence may offer is exactly what is undone in one step
    assert SAFE_WHEN_UNSURE == {ActionKind.SCALE, ActionKind.CIRCUIT_BREAKER, ActionKind.ROLLOUT_RESTART}


def test_a_stored_kind_reads_back_as_the_member_and_writes_the_same_text():
    action = PlannedAction("rollback", "t", "b", "a", "via", SAMPLES["rollback by undo"][1])
    assert action.kind is ActionKind.ROLLBACK and action.as_dict()["kind"] == "rollback"
    plan = Plan.from_dict({**Plan(1, "api", "sandbox", (action,)).to_dict(), "confidence": "weak"})
    assert plan.confidence is Confidence.WEAK and plan.actions[0].kind is ActionKind.ROLLBACK
    assert f"{plan.confidence}" == "weak" and plan.to_dict()["confidence"] == "weak"
    with pytest.raises(UnknownKind, match="no confidence 'sure'"):
        Plan(1, "api", "sandbox", (), confidence="sure")  # type: ignore[arg-type]  # text from the wire


def test_the_strategy_chooses_the_model():
    assert type(_action("rollback by undo").params) is RollbackByUndo
    assert type(_action("rollback by workflow").params) is RollbackByWorkflow
    assert type(_action("deny at the ingress").params) is IngressDenylistBlock
    assert type(_action("block by policy").params) is NetworkPolicyBlock
    scale = _action("scale an hpa").params_as(Scale)
    assert (scale.from_, scale.to, scale.max, scale.hpa) == (2, 5, 8, "api")


@pytest.mark.parametrize("kind, params, wrong", [
    ("rollback", {**SAMPLES["rollback by undo"][1], "strategy": "helm"}, "strategy"),
    ("rollback", {**SAMPLES["rollback by workflow"][1], "repo": None}, "repo"),
    ("scale", {"namespace": "sandbox", "deployment": "api", "from": 3}, "to"),
    ("scale", {**SAMPLES["scale an hpa"][1], "max": None}, "maxReplicas"),
    ("scale", {**SAMPLES["scale"][1], "replicas": 9}, "replicas"),
    ("circuit_breaker", {**SAMPLES["circuit breaker"][1], "configmap": None}, "redis_url_secret"),
    ("terminate_sessions", {"sessions": [["not a pid", "x"]]}, "sessions"),
    ("clear_cache", {"mode": "flushall", "prefix": "api:"}, "mode"),
    ("block_ips", {"namespace": "sandbox", "cidrs": ["203.0.113.7/32"]}, "strategy"),
])
def test_a_malformed_action_is_refused_naming_the_field(kind, params, wrong):
    with pytest.raises(ValidationError, match=wrong):
        PlannedAction(kind, "target", "before", "after", "via", params)


def test_an_unknown_kind_or_a_model_of_another_kind_is_refused():
    with pytest.raises(UnknownKind, match="'drop_table'.*known: block_ips"):
        PlannedAction("drop_table", "target", "before", "after", "via", {})
    with pytest.raises(ValueError, match="Scale parameters do not belong to a rollback action"):
        PlannedAction("rollback", "target", "before", "after", "via", _action("scale").params)
    with pytest.raises(TypeError, match="a rollback action has RollbackByUndo parameters, not Scale"):
        _action("rollback by undo").params_as(Scale)


def test_a_plan_round_trips_through_its_record_and_its_grant_still_covers_it():
    plan = Plan(7, "api", "sandbox", tuple(_action(name) for name in sorted(SAMPLES)), ("health: down",),
                summary="Contain.")
    grant = Grant.issue(plan, "sam", "looks right")
    stored = Plan.from_dict(plan.to_dict())
    assert stored == plan and stored.digest == plan.digest
    for action in stored.actions:
        assert require_grant(grant, action) is grant
    changed = PlannedAction("scale", "target", "before", "after", "via", {**SAMPLES["scale"][1], "to": 60})
    with pytest.raises(PermissionError, match="does not contain this action"):
        require_grant(grant, changed)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_prefect_can_walk_an_action_handed_to_a_task(name):
    """Prefect visits a task's parameters (dict() on a model): no field may shadow a mapping method."""
    from prefect.utilities.collections import visit_collection

    action = _action(name)
    assert visit_collection(action, lambda x: x, return_data=True) == action
