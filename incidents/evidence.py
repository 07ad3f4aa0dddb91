"""What a diagnosis found, as typed facts, and how sure a plan built on them is.

The checks write their findings (`incidents.findings.Finding`); `service_facts` reads them in
this one place into `ServiceFacts`, and the planning rules reason over those. A plan carries
its confidence and the evidence for and against it; `settle` turns a rule's choice into the
plan it may offer: a weak choice only with actions that are safe to try and easy to undo,
otherwise an abstention that says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import TYPE_CHECKING, Mapping, TypeVar

from incidents.check_facts import (
    BREAKER,
    DEPLOYS,
    HEALTH,
    RATE,
    ROLLOUT,
    Autoscaler,
    BreakerFacts,
    DeploysFacts,
    Facts,
    HealthFacts,
    RateFacts,
    Revision,
    RolloutFacts,
)

if TYPE_CHECKING:
    from incidents.findings import Finding
    from incidents.plans import Plan, PlannedAction

F = TypeVar("F", bound=Facts)

STRONG, WEAK, NONE = "strong", "weak", "none"

# Actions a plan may offer on weak evidence: trying them cannot make the outage worse and
# they are undone in one step (scale back down, switch the breaker back, the pods of an
# unchanged version come back). A rollback, a terminated session, a cleared cache, a rotated
# secret or a block is never offered on a hunch.
SAFE_WHEN_UNSURE = frozenset({"scale", "circuit_breaker", "rollout_restart"})


# An alert's startsAt comes after the failure began (a rule's `for:`), never before it; only the
# clocks of the monitor and the cluster may disagree, by this much at most.
CLOCK_SKEW_SECONDS = 10.0


class Handover(str, Enum):
    DATABASE = "database-issues"


def _parse(stamp: str | None) -> datetime | None:
    if not stamp:
        return None
    try:
        parsed = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def version_of(image: str) -> str:
    """The tag of an image reference (what a service labels its metrics with)."""
    tail = image.rsplit("/", 1)[-1]
    return tail.rsplit(":", 1)[-1] if ":" in tail else "latest"


@dataclass(frozen=True)
class Release:
    revision: int
    image: str
    went_live: datetime | None

    @property
    def version(self) -> str:
        return version_of(self.image)

    def describe(self) -> str:
        return f"revision {self.revision} ({self.image})"


@dataclass(frozen=True)
class Pod:
    name: str
    ready: bool
    restarts: int
    waiting: str | None
    image: str

    @property
    def failing(self) -> bool:
        return not self.ready and (
            bool(self.restarts)
            or self.waiting in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError")
        )


@dataclass(frozen=True)
class Traffic:
    """Requests and errors one version served: in the sampling window, and in all."""
    version: str
    window_requests: float
    window_errors: float
    requests: float
    errors: float

    @property
    def window_rate(self) -> float:
        return self.window_errors / self.window_requests if self.window_requests else 0.0

    @property
    def lifetime_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class ServiceFacts:
    now: datetime
    onset: datetime | None = None                 # when the failure began (the alert's startsAt)
    endpoints_ok: bool | None = None              # None: not probed
    failing_checks: tuple[str, ...] = ()          # what the service's /health names as failing
    pods: tuple[Pod, ...] = ()
    pods_known: bool = False
    desired_replicas: int | None = None
    current: Release | None = None                # the revision the deployment runs now
    recent: Release | None = None                 # the newest revision, when it went live in the window
    previous: Release | None = None               # the one before the newest
    error_rate: float | None = None               # in the sampling window
    threshold: float | None = None
    request_rps: float | None = None
    capacity_rps: float | None = None             # ready replicas x capacity per replica, when configured
    traffic: tuple[Traffic, ...] = ()
    breaker: str | None = None
    autoscaler: Autoscaler | None = None          # the HPA that owns the replica count

    @property
    def ready_pods(self) -> int:
        return sum(p.ready for p in self.pods)

    def traffic_of(self, version: str) -> Traffic | None:
        return next((t for t in self.traffic if t.version == version), None)

    @property
    def spiking(self) -> bool:
        return self.error_rate is not None and self.threshold is not None and self.error_rate >= self.threshold

    @property
    def overload_share(self) -> float:
        """The share of requests that capacity alone fails (0 when within capacity or unknown)."""
        if not self.request_rps or self.capacity_rps is None or self.request_rps <= self.capacity_rps:
            return 0.0
        return 1 - self.capacity_rps / self.request_rps

    def since_rollout(self, release: Release) -> float | None:
        """Seconds from the release going live to the failure's onset (None: either unknown)."""
        if self.onset is None or release.went_live is None:
            return None
        return (self.onset - release.went_live).total_seconds()


@dataclass
class Weighing:
    """Evidence for and against one choice, collected while a rule reasons."""
    support: list[str] = field(default_factory=list)
    against: list[str] = field(default_factory=list)

    def add(self, holds: bool, for_it: str, against_it: str | None = None) -> bool:
        if holds:
            self.support.append(for_it)
        elif against_it:
            self.against.append(against_it)
        return holds


def _release(revision: Revision | None) -> Release | None:
    return Release(revision.revision, revision.image, _parse(revision.created)) if revision else None


def _usable(findings: Mapping[str, Finding], check: str, model: type[F]) -> F | None:
    """The facts of a check that ran and could look (None: it did not run, or could not see)."""
    finding = findings.get(check)
    return finding.facts(model) if finding is not None and finding.ok is not None else None


def _current(rollout: RolloutFacts | None, deploys: DeploysFacts) -> Release | None:
    """The revision the deployment runs now, with when it went live if the history has it."""
    if rollout is None or rollout.revision is None:
        return None
    known = next((r for r in deploys.revisions if r.revision == rollout.revision), None)
    return _release(known) if known else Release(rollout.revision, rollout.image or "", None)


def service_facts(findings: Mapping[str, Finding], now: datetime, onset: datetime | None = None,
                  threshold: float | None = None, capacity_per_replica: float | None = None) -> ServiceFacts:
    """The facts the rules need, read from the findings of whichever checks ran (a check that
    did not run, or could not, leaves its facts unknown)."""
    health, breaker = findings.get(HEALTH), findings.get(BREAKER)
    rollout, rate = _usable(findings, ROLLOUT, RolloutFacts), _usable(findings, RATE, RateFacts)
    deploys = findings[DEPLOYS].facts(DeploysFacts) if DEPLOYS in findings else DeploysFacts()
    pods_known = rollout is not None and bool(rollout.model_fields_set)
    pods = tuple(Pod(p.name, p.ready, p.restarts, p.waiting, p.image) for p in rollout.pods) if rollout else ()
    traffic = tuple(Traffic(v, float(c.window_requests), float(c.window_errors), float(c.requests), float(c.errors))
                    for v, c in (rate.versions if rate else {}).items())
    ready = sum(p.ready for p in pods)
    return ServiceFacts(
        now=now, onset=onset,
        endpoints_ok=health.ok if health is not None else None,
        failing_checks=tuple(health.facts(HealthFacts).failing_checks) if health is not None else (),
        pods=pods, pods_known=pods_known,
        desired_replicas=rollout.desired_replicas if rollout else None,
        current=_current(rollout, deploys), recent=_release(deploys.recent_revision),
        previous=_release(deploys.previous_revision),
        error_rate=rate.rate if rate else None, threshold=threshold,
        request_rps=rate.rps if rate else None,
        capacity_rps=ready * capacity_per_replica if capacity_per_replica and pods_known else None,
        traffic=traffic,
        breaker=breaker.facts(BreakerFacts).value if breaker is not None and breaker.ok else None,
        autoscaler=rollout.autoscaler if rollout else None)


def age(seconds: float) -> str:
    minutes = int(abs(seconds) // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(abs(seconds)) % 60:02d}s"


def settle(head: Plan, actions: list[PlannedAction], confidence: str, weighing: Weighing, summary: str,
           handover: str | None = None) -> Plan:
    """The plan a rule may offer: its actions with their confidence and evidence; a weak choice
    that holds an action outside SAFE_WHEN_UNSURE becomes an abstention that says why."""
    from dataclasses import replace

    unsafe = sorted({a.kind for a in actions if a.kind not in SAFE_WHEN_UNSURE})
    if confidence == WEAK and unsafe:
        return replace(head, actions=(), confidence=NONE, support=tuple(weighing.support),
                       against=tuple(weighing.against),
                       summary=f"Abstaining: {summary} But the evidence is weak, and {', '.join(unsafe)} is not "
                               f"safe to try on weak evidence: a person must decide.")
    if not actions and confidence != STRONG:
        confidence = NONE
    return replace(head, actions=tuple(actions), confidence=confidence, support=tuple(weighing.support),
                   against=tuple(weighing.against), summary=summary, handover=handover)


def abstain(head: Plan, weighing: Weighing, reason: str) -> Plan:
    """No plan: the evidence conflicts or names no cause a remedy here fixes."""
    return settle(head, [], NONE, weighing, f"Abstaining: {reason} No change is planned; a person must look.")


def release_tie(facts: ServiceFacts, release: Release, previous: Release | None, window_seconds: float,
                weighing: Weighing) -> bool:
    """Whether the evidence ties the failure to `release`: it has failed since it went live,
    the revision before it did not, and the failure began with its rollout. Adds what it finds
    to `weighing`; tied only when something supports it and nothing speaks against it."""
    before = len(weighing.against)
    supported = False
    threshold = facts.threshold or 0.0
    new = facts.traffic_of(release.version)
    if new is not None and new.window_requests and new.window_rate >= threshold:
        served = new.requests - new.window_requests
        if new.lifetime_rate >= 0.5 * new.window_rate:
            supported = weighing.add(True, f"{release.version} has failed since it went live: {new.lifetime_rate:.0%} "
                                           f"of its {new.requests:g} requests (now {new.window_rate:.0%})")
        else:
            weighing.add(False, "", f"{release.version} served {served:g} requests at {new.lifetime_rate:.0%} errors "
                                    f"in all before the errors rose to {new.window_rate:.0%}: they began after its "
                                    f"rollout, not with it")
    old = facts.traffic_of(previous.version) if previous is not None else None
    if previous is not None and old is not None and old.requests:
        weighing.add(old.lifetime_rate < threshold,
                     f"the revision before it ({previous.version}) served with {old.lifetime_rate:.1%} errors",
                     f"the revision before it ({previous.version}) failed too ({old.lifetime_rate:.0%} errors): "
                     f"the errors are not new with {release.version}")
    lag = facts.since_rollout(release)
    if lag is not None:
        if lag < -CLOCK_SKEW_SECONDS:
            weighing.add(False, "", f"the failure began {age(lag)} before {release.describe()} went live")
        elif lag > window_seconds:
            weighing.add(False, "", f"the failure began {age(lag)} after {release.describe()} went live: a bad "
                                    f"release fails within {age(window_seconds)}")
        else:
            supported = weighing.add(True, f"the failure began {age(max(lag, 0))} after {release.describe()} went live")
    return supported and len(weighing.against) == before
