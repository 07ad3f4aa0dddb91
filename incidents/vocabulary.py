"""The project's words for kinds, each listed once: what an action does, how sure a plan is,
how an incident was detected.

Each is a `StrEnum`: a member is equal to, formats as and serialises to its text, so a plan,
a digest or a database row written before these existed reads back unchanged, and one written
now reads the same to an older release. The registries keyed by `ActionKind` (the remedies,
their re-checks, the parameter models) are built from it, and a test holds each to every kind.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Self

from incidents.errors import RunbookError


class UnknownKind(RunbookError, ValueError):
    """A text that names no member of the vocabulary asked for."""


class Word(StrEnum):
    """A vocabulary: `parse` refuses a text that names no member (input, a plan being made);
    `read` keeps such a text as it is (a record an older or newer release wrote)."""

    @classmethod
    def parse(cls, value: str) -> Self:
        try:
            return cls(value)
        except ValueError:
            noun = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()  # ActionKind: "action kind"
            raise UnknownKind(f"no {noun} {value!r} (known: {', '.join(sorted(cls))})") from None

    @classmethod
    def read(cls, value: str) -> Self | str:
        try:
            return cls(value)
        except ValueError:
            return value


class ActionKind(Word):
    ROLLBACK = "rollback"
    ROLLOUT_RESTART = "rollout_restart"
    SCALE = "scale"
    CIRCUIT_BREAKER = "circuit_breaker"
    TERMINATE_SESSIONS = "terminate_sessions"
    CANCEL_QUERIES = "cancel_queries"
    CLEAR_CACHE = "clear_cache"
    ROTATE_SECRETS = "rotate_secrets"
    BLOCK_IPS = "block_ips"
    ENABLE_LOGGING = "enable_logging"

    @property
    def safety(self) -> Safety:
        return _SAFETY[self]


class Safety(StrEnum):
    """What an action risks, which decides the evidence it needs."""

    # Trying it cannot make the outage worse and it is undone in one step (scale back down,
    # switch the breaker back, the pods of an unchanged version come back): weak evidence may offer it.
    UNDONE_IN_ONE_STEP = "undone_in_one_step"
    # It changes what runs or ends what is running (a rollback, a terminated session, a cleared
    # cache, a rotated secret): never offered on a hunch.
    NEEDS_STRONG_EVIDENCE = "needs_strong_evidence"
    # Containment: it stands after the incident (until it expires or is lifted), and never on a hunch.
    STANDS_AFTER_THE_INCIDENT = "stands_after_the_incident"


_SAFETY: dict[ActionKind, Safety] = {
    ActionKind.SCALE: Safety.UNDONE_IN_ONE_STEP,
    ActionKind.CIRCUIT_BREAKER: Safety.UNDONE_IN_ONE_STEP,
    ActionKind.ROLLOUT_RESTART: Safety.UNDONE_IN_ONE_STEP,
    ActionKind.ROLLBACK: Safety.NEEDS_STRONG_EVIDENCE,
    ActionKind.TERMINATE_SESSIONS: Safety.NEEDS_STRONG_EVIDENCE,
    ActionKind.CANCEL_QUERIES: Safety.NEEDS_STRONG_EVIDENCE,
    ActionKind.CLEAR_CACHE: Safety.NEEDS_STRONG_EVIDENCE,
    ActionKind.ROTATE_SECRETS: Safety.NEEDS_STRONG_EVIDENCE,
    ActionKind.BLOCK_IPS: Safety.STANDS_AFTER_THE_INCIDENT,
    ActionKind.ENABLE_LOGGING: Safety.STANDS_AFTER_THE_INCIDENT,
}

# Actions a plan may offer on weak evidence.
SAFE_WHEN_UNSURE = frozenset(kind for kind in ActionKind if kind.safety is Safety.UNDONE_IN_ONE_STEP)
# Actions whose effect is recorded as standing containment (incidents/containment.py).
CONTAINMENT_KINDS = frozenset(kind for kind in ActionKind if kind.safety is Safety.STANDS_AFTER_THE_INCIDENT)


class Confidence(Word):
    STRONG = "strong"
    WEAK = "weak"
    NONE = "none"  # an abstention: no action


class DetectedBy(Word):
    """Who or what opened the incident (the playbook's 'Detected By')."""

    ALERT = "alert"  # an alert through the intake
    SLACK = "slack"  # a person, with the Slack command
    MANUAL_RUN = "manual run"  # a run started by hand, with no alert
    RUNBOOK = "runbook"  # a runbook opened it itself (the database's default)
    DRY_RUN = "dry run"  # a dry run's record: closed from the start, counted nowhere
