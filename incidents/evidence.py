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
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from incidents.plans import Plan, PlannedAction

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
    autoscaler: dict[str, Any] | None = None                # the HPA that owns the replica count: {name, min, max}

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


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _release(data: Mapping[str, Any] | None) -> Release | None:
    if not data or _int(data.get("revision")) is None:
        return None
    return Release(int(data["revision"]), str(data.get("image", "")), _parse(data.get("created")))


def service_facts(findings: Mapping[str, Any], now: datetime, onset: datetime | None = None,
                  threshold: float | None = None, capacity_per_replica: float | None = None) -> ServiceFacts:
    """The facts the rules need, read from the findings of whichever checks ran (a check that
    did not run, or could not, leaves its facts unknown)."""
    from incidents.error_rate_rules import BREAKER, RATE
    from incidents.findings import DEPLOYS, HEALTH, ROLLOUT

    health, rollout, deploys = findings.get(HEALTH), findings.get(ROLLOUT), findings.get(DEPLOYS)
    rate, breaker = findings.get(RATE), findings.get(BREAKER)
    rollout_data = rollout.data if rollout is not None and rollout.ok is not None else {}
    pods = tuple(Pod(p.get("name", ""), bool(p.get("ready")), int(p.get("restarts") or 0), p.get("waiting"),
                     p.get("image", "")) for p in rollout_data.get("pods", []))
    deploy_data = deploys.data if deploys is not None else {}
    revisions = {int(r["revision"]): r for r in deploy_data.get("revisions", []) if _int(r.get("revision")) is not None}
    current_no = _int(rollout_data.get("revision"))
    current = _release(revisions.get(current_no)) if current_no in revisions else (
        Release(current_no, rollout_data.get("image", ""), None) if current_no is not None else None)
    rate_data = rate.data if rate is not None and rate.ok is not None else {}
    traffic = tuple(Traffic(v, float(c.get("window_requests") or 0), float(c.get("window_errors") or 0),
                            float(c.get("requests") or 0), float(c.get("errors") or 0))
                    for v, c in (rate_data.get("versions") or {}).items())
    ready = sum(p.ready for p in pods)
    return ServiceFacts(
        now=now, onset=onset,
        endpoints_ok=health.ok if health is not None else None,
        failing_checks=tuple((health.data.get("failing_checks") or ()) if health is not None else ()),
        pods=pods, pods_known=bool(rollout_data),
        desired_replicas=_int(rollout_data.get("desired_replicas")),
        current=current, recent=_release(deploy_data.get("recent_revision")),
        previous=_release(deploy_data.get("previous_revision")),
        error_rate=rate_data.get("rate"), threshold=threshold,
        request_rps=rate_data.get("rps"),
        capacity_rps=ready * capacity_per_replica if capacity_per_replica and rollout_data else None,
        traffic=traffic, breaker=(breaker.data.get("value") if breaker is not None and breaker.ok else None),
        autoscaler=rollout_data.get("autoscaler"))


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
