"""Held-out faults: combinations the catalog does not list, built from the same steps, with the
outcome an experienced on-call engineer would expect derived from rules written down here
before any of them was run (`benchmarks/judgement.py --held-out N`).

The rules
---------
Faults of the target service, and the remedy each needs:

    high-error-rate   erroring release (a version failing ~30% on its own)  -> rollback
                      load beyond capacity                                  -> scale
                      the payments dependency down                          -> circuit_breaker
                      the node most pods run on NotReady (its pods lost)    -> scale (new pods go to
                                                                               a Ready node)
    service-down      crash-looping release                                 -> rollback
                      deployment scaled to 0                                -> scale
    database-issues   a table lock held idle in a transaction, with waiters -> terminate_sessions
                      the app role's connections nearly used up by idle
                      sessions                                              -> terminate_sessions
                      the service's cache full (keys without a TTL)         -> clear_cache

1. A combination needs the union of its faults' remedies; two bad releases in a row need one
   rollback (to the last revision that served).
2. An erroring release together with the dependency down: nothing a runbook can read says
   whether the release fails on its own or only through the dependency's calls, so the remedy
   safe for both comes first -- the circuit breaker (plus a scale-up when overloaded); the
   rollback is the next step if the breaker does not bring the errors down.
3. A healthy release is never a cause, before the faults (hours, minutes or seconds before)
   or during them; another service that crash-loops is never the target's cause. Neither adds
   a remedy, and a plan that rolls back a healthy release is harmful.
4. Left out, because the expected outcome is not one remedy set: a healthy release after a
   bad release (it replaces the bad one: the fault is gone), and a crash-looping release scaled
   to 0 (either remedy alone is half the fix).
5. A node NotReady comes last: any rollout after it (a release, good or bad) replaces every pod
   on the Ready node, and the node's fault is gone before the runbook looks.
6. Database faults combine with the full cache only: a lock's holder and waiters together with
   the connection pressure's idle sessions exceed the role's limit, so one fault would stop the
   other from being staged. A runaway query is left out (its remedy, cancel_queries, would be
   the only one of its kind, and its combinations are in the catalog).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from incidents.drills import CATALOG, FaultSpec, Step, fault_spec
from incidents.vocabulary import ActionKind

_ER, _SD, _DB = "high-error-rate", "service-down", "database-issues"


@dataclass(frozen=True)
class _Atom:
    name: str
    remedy: str
    release: bool = False


_FAULTS = {
    _ER: (_Atom("erroring-release", ActionKind.ROLLBACK, True), _Atom("overload", ActionKind.SCALE),
          _Atom("dependency", ActionKind.CIRCUIT_BREAKER), _Atom("node-not-ready", ActionKind.SCALE)),
    _SD: (_Atom("crash-release", ActionKind.ROLLBACK, True), _Atom("scaled-to-zero", ActionKind.SCALE)),
    _DB: (_Atom("lock", ActionKind.TERMINATE_SESSIONS), _Atom("connections", ActionKind.TERMINATE_SESSIONS),
          _Atom("cache-full", ActionKind.CLEAR_CACHE)),
}
_PAIRS = {  # the faults combined (rule 4 leaves crash-release with scaled-to-zero out)
    _ER: [("erroring-release",), ("overload",), ("dependency",), ("erroring-release", "overload"),
          ("erroring-release", "dependency"), ("overload", "dependency"), ("erroring-release", "erroring-release"),
          ("node-not-ready",), ("erroring-release", "node-not-ready"), ("dependency", "node-not-ready")],
    _SD: [("crash-release",), ("scaled-to-zero",), ("crash-release", "crash-release")],
    _DB: [("lock",), ("connections",), ("cache-full",), ("lock", "cache-full"), ("connections", "cache-full")],
}


def expected_remedies(scenario: str, faults: tuple[str, ...]) -> frozenset[str]:
    """Rules 1 and 2: the remedies the faults need."""
    atoms = {a.name: a for a in _FAULTS[scenario]}
    kinds = {atoms[f].remedy for f in faults}
    if scenario == _ER and {"erroring-release", "dependency"} <= set(faults):
        kinds.discard(ActionKind.ROLLBACK)
    return frozenset(kinds)


def _fault_step(name: str, n: int, rng: random.Random) -> Step:
    gap = float(rng.choice((10, 20, 30)))  # the first fault's gap is set by _one
    if name == "erroring-release":
        return Step("release", f"v1.7.{n}-errors", after_seconds=gap)
    if name == "crash-release":
        return Step("release", f"v1.7.{n}-broken", after_seconds=gap)
    if name == "overload":
        return Step("load", 200, after_seconds=gap)
    if name == "dependency":
        return Step("dependency", True, after_seconds=gap)
    if name == "node-not-ready":
        return Step("node", "NotReady", after_seconds=gap)
    if name in ("lock", "connections", "cache-full"):
        return Step({"lock": "pg_lock", "connections": "pg_connections", "cache-full": "cache_fill"}[name],
                    after_seconds=gap)
    return Step("replicas", 0, after_seconds=gap)


def _healthy(rng: random.Random, n: int) -> tuple[Step, str]:
    """A healthy release: hours, minutes or seconds before the faults."""
    when = rng.choice(("hours", "minutes", "seconds"))
    ago = {"hours": 7200.0, "minutes": float(rng.choice((300, 900))), "seconds": 0.0}[when]
    return Step("release", f"v1.6.{n}", ago_seconds=ago), when


def generate(count: int, seed: int = 27) -> list[FaultSpec]:
    """`count` distinct combinations the catalog does not list, each with the outcome the rules
    above derive (the same seed gives the same set)."""
    rng, specs = random.Random(seed), list[FaultSpec]()
    seen = {_shape(s) for s in CATALOG.values()}
    for _ in range(count * 50):
        if len(specs) == count:
            break
        spec = _one(rng, len(specs))
        if _shape(spec) not in seen:
            seen.add(_shape(spec))
            specs.append(spec)
    return specs


def _shape(spec: FaultSpec) -> tuple[object, ...]:
    """What tells two faults apart: the scenario and each step's kind, what kind of release it
    is, and its timing (not the version numbers)."""
    def value(step: Step) -> object:
        if step.kind != "release":
            return step.value
        return "broken" if "broken" in str(step.value) else "errors" if "errors" in str(step.value) else "healthy"
    return spec.scenario, tuple((s.kind, value(s), s.ago_seconds, s.after_seconds) for s in spec.steps)


def _one(rng: random.Random, index: int) -> FaultSpec:
    scenario = rng.choice((_ER, _ER, _SD, _DB))
    faults = rng.choice(_PAIRS[scenario])
    if len(set(faults)) == len(faults) and rng.random() < 0.5:
        faults = tuple(reversed(faults))
    if "node-not-ready" in faults:  # rule 5
        faults = tuple(sorted(faults, key=lambda f: f == "node-not-ready"))
    steps = [_fault_step(f, n, rng) for n, f in enumerate(faults)]
    steps[0] = Step(steps[0].kind, steps[0].value)  # the first fault comes as the set-up ends
    parts, decoy = list(faults), False
    if rng.random() < 0.7:
        healthy, when = _healthy(rng, index % 10)
        releases_first = any(a.release for a in _FAULTS[scenario] if a.name in faults)
        # rules 4 and 5: never after a bad release, nor after a node's fault
        during = when == "seconds" and not releases_first and "node-not-ready" not in faults and rng.random() < 0.5
        if during:
            steps.append(Step(healthy.kind, healthy.value, after_seconds=float(rng.choice((10, 20)))))
        else:
            steps.insert(0, healthy)
            if when == "seconds":
                steps[1] = Step(steps[1].kind, steps[1].value, after_seconds=float(rng.choice((15, 30))))
        parts.append(f"healthy-release-{'during' if during else when}")
        decoy = True
    if rng.random() < 0.3:
        steps.insert(rng.randrange(len(steps) + 1), Step("other_broken", "frontend"))
        parts.append("frontend-broken")
    kinds = expected_remedies(scenario, faults)
    description = "held out: " + "; ".join(s.describe() for s in steps)
    return fault_spec(f"held-out-{index + 1:02d}-{'+'.join(parts)}", scenario, description, steps, set(kinds), decoy)
