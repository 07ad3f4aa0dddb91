"""What each kind of remedy needs to act on its target: one model per kind of action.

A planner (`incidents/*_rules.py`) writes these, the approval shows the action they belong
to, and the remedy (`tasks/`) and its re-check (`tasks/prechecks.py`) read them; none of
them reads a key the other did not write. The action's `kind` chooses the model (a tagged
union on the kind, `parse`); rollback and block_ips are further tagged on their `strategy`.

An action's digest, which an approval grant covers, is computed over `as_dict()`: the
fields the planner set, under their wire names. A plan stored before the models existed
reads back to the same digests, so a grant issued then still covers its actions.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from incidents.vocabulary import ActionKind


class ActionParams(BaseModel):
    """No field may be named like a mapping method (keys, items, values, get): Prefect walks
    task parameters with dict(model), which would call it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    kinds: ClassVar[tuple[ActionKind, ...]] = ()

    def as_dict(self) -> dict[str, Any]:
        """The fields the planner set, under their wire names (what the digest covers)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Rollback(ActionParams):
    kinds = (ActionKind.ROLLBACK,)
    namespace: str
    deployment: str
    from_revision: int
    to_revision: int
    to_image: str | None


class RollbackByUndo(Rollback):
    """kubectl rollout undo --to-revision."""

    strategy: Literal["kubernetes_undo"]


class RollbackByWorkflow(Rollback):
    """The service's GitHub rollback workflow, dispatched on `ref` with the target named."""

    strategy: Literal["github_workflow"]
    repo: str
    workflow: str
    ref: str
    environment: str


class RolloutRestart(ActionParams):
    kinds = (ActionKind.ROLLOUT_RESTART,)
    namespace: str
    deployment: str
    revision: int | None = None  # the revision planned for; not set: any revision may be restarted


class Scale(ActionParams):
    """Replicas `from_` -> `to`; with `hpa`, the autoscaler's minReplicas (and maxReplicas `max`)."""

    kinds = (ActionKind.SCALE,)
    namespace: str
    deployment: str
    from_: int = Field(alias="from")
    to: int
    hpa: str | None = None
    max: int | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "Scale":
        if self.hpa and self.max is None:
            raise ValueError("scaling an HPA needs its maxReplicas (max)")
        return self


class CircuitBreaker(ActionParams):
    """A flag in a ConfigMap (`configmap`) or in Redis (`redis_url_secret`)."""

    kinds = (ActionKind.CIRCUIT_BREAKER,)
    namespace: str
    configmap: str | None
    redis_url_secret: str | None
    key: str
    value: str
    previous: str | None

    @model_validator(mode="after")
    def _one_home(self) -> "CircuitBreaker":
        if not self.configmap and not self.redis_url_secret:
            raise ValueError("a circuit breaker lives in a configmap or behind a redis_url_secret")
        return self


class SessionState(BaseModel):
    """A backend as planned: in `state` for `seconds` (of its state, or of its query)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    state: str | None
    seconds: int | float
    clock: Literal["state", "query"]


class Sessions(ActionParams):
    """Backends by (pid, backend_start ISO), so a reused pid is never signalled."""

    kinds = (ActionKind.TERMINATE_SESSIONS, ActionKind.CANCEL_QUERIES)
    sessions: list[tuple[int, str]]
    allow_superuser: bool = False
    waiters: list[int] = []
    expect: dict[str, SessionState] = {}


class ClearCache(ActionParams):
    kinds = (ActionKind.CLEAR_CACHE,)
    mode: Literal["prefix", "flushdb"]
    prefix: str
    # keys under the prefix when planned; wire name "keys" (a field named keys would turn the
    # model into a mapping for dict(), which Prefect calls on task parameters)
    planned_keys: int | None = Field(default=None, alias="keys")


class RotateSecret(ActionParams):
    kinds = (ActionKind.ROTATE_SECRETS,)
    namespace: str
    secret: str
    data_keys: list[str] = Field(alias="keys")
    consumers: list[str]
    resource_version: str | None = None  # "?" or unset: not read at planning, not re-checked


class Block(ActionParams):
    kinds = (ActionKind.BLOCK_IPS,)
    namespace: str
    cidrs: list[str]
    existing: list[str] = []


class IngressDenylistBlock(Block):
    strategy: Literal["ingress_denylist"]
    ingress: str


class NetworkPolicyBlock(Block):
    strategy: Literal["network_policy"]
    policy: str
    app: str
    labels: dict[str, str] = {}


class EnableLogging(ActionParams):
    kinds = (ActionKind.ENABLE_LOGGING,)
    namespace: str
    configmap: str
    key: str
    level: str
    previous: str | None


_ROLLBACK = Annotated[RollbackByUndo | RollbackByWorkflow, Field(discriminator="strategy")]
_BLOCK = Annotated[IngressDenylistBlock | NetworkPolicyBlock, Field(discriminator="strategy")]
_BY_KIND: dict[ActionKind, TypeAdapter[Any]] = {
    ActionKind.ROLLBACK: TypeAdapter(_ROLLBACK),
    ActionKind.BLOCK_IPS: TypeAdapter(_BLOCK),
    **{kind: TypeAdapter(model) for model in (RolloutRestart, Scale, CircuitBreaker, Sessions, ClearCache,
                                               RotateSecret, EnableLogging) for kind in model.kinds},
}

P = TypeVar("P", bound=ActionParams)


def parse(kind: str, params: ActionParams | dict[str, Any]) -> ActionParams:
    """The parameters of an action of `kind`, validated by that kind's model; a ValueError
    (pydantic's ValidationError, or UnknownKind) names what is wrong."""
    adapter = _BY_KIND[ActionKind.parse(kind)]
    if isinstance(params, ActionParams):
        if kind not in params.kinds:
            raise ValueError(f"{type(params).__name__} parameters do not belong to a {kind} action")
        return params
    parsed: ActionParams = adapter.validate_python(params)
    return parsed
