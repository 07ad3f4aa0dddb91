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
    CONFIG,
    DEPLOYS,
    HEALTH,
    LATENCY,
    NETWORK,
    NODES,
    RATE,
    ROLLOUT,
    USAGE,
    VOLUMES,
    Autoscaler,
    BreakerFacts,
    ConfigFacts,
    DeploysFacts,
    Facts,
    HealthFacts,
    LatencyFacts,
    NetworkFacts,
    NodeFacts,
    NodeState,
    RateFacts,
    Revision,
    RolloutFacts,
    UsageFacts,
    VolumeFacts,
)
from incidents.vocabulary import SAFE_WHEN_UNSURE, ActionKind, Confidence

if TYPE_CHECKING:
    from incidents.findings import Finding
    from incidents.plans import Plan, PlannedAction

F = TypeVar("F", bound=Facts)


# An earlier revision whose lifetime error rate is at least this share of the newest's current
# rate failed from its start, as a bad release does (not after serving cleanly for a while).
FAILED_FROM_START = 0.8

# A revision served cleanly below this error rate when the scenario sets no threshold of its own.
CLEAN_ERROR_RATE = 0.05
# A new revision failing at least 1 / ROSE_WITH_RELEASE times the rate of the one before: the errors rose with it.
ROSE_WITH_RELEASE = 0.5

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
    last_termination: str | None = None  # why its container last ended (OOMKilled, Error, ...)
    node: str | None = None  # the node it runs on (None: no node took it)

    @property
    def oom_killed(self) -> bool:
        return self.last_termination == "OOMKilled"

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
    history: tuple[Release, ...] = ()             # every revision the cluster keeps, newest first
    error_rate: float | None = None               # in the sampling window
    threshold: float | None = None
    request_rps: float | None = None
    capacity_rps: float | None = None             # ready replicas x capacity per replica, when configured
    traffic: tuple[Traffic, ...] = ()
    breaker: str | None = None
    autoscaler: Autoscaler | None = None          # the HPA that owns the replica count
    memory_limit: str | None = None               # the container's memory limit
    config_changes: tuple[tuple[str, datetime], ...] = ()  # (configmap/x or secret/y, when it last changed)
    reached: tuple[tuple[str, str, str], ...] = ()  # (dependency, outcome, detail) of its direct probe
    slow: tuple[tuple[str, int], ...] = ()        # (endpoint, ms) of answers slower than the objective
    slo_ms: float | None = None
    nodes: NodeFacts | None = None                # the nodes the pods run on (None: not read)
    usage: UsageFacts | None = None               # the pods' CPU and memory (None: not read)
    full_volumes: tuple[tuple[str, float], ...] = ()  # (claim, share used) of each claim at its threshold

    @property
    def ready_pods(self) -> int:
        return sum(p.ready for p in self.pods)

    @property
    def down_nodes(self) -> tuple[NodeState, ...]:
        """The nodes of the service's pods whose kubelet does not report Ready."""
        return tuple(n for n in (self.nodes.nodes if self.nodes else []) if not n.error and n.ready != "True")

    def cpu_saturation(self) -> str | None:
        """How far the pods' CPU runs above their request, when it does (None: within it, or unknown)."""
        usage = self.usage
        peak = usage.cpu_peak_m if usage else None
        if usage is None or peak is None or not usage.cpu_request_m or peak < usage.cpu_request_m:
            return None
        ratio = peak / usage.cpu_request_m
        return f"the pods use up to {peak:g}m CPU, {ratio:.1f}x their {usage.cpu_request_m:g}m request"

    def memory_use(self) -> str | None:
        usage = self.usage
        peak = usage.memory_peak_mi if usage else None
        if usage is None or peak is None or not usage.memory_limit_mi:
            return None
        return f"memory up to {peak:g}Mi of the {usage.memory_limit_mi:g}Mi limit ({peak / usage.memory_limit_mi:.0%})"

    def lost_to_nodes(self) -> list[Pod]:
        """The pods that are not ready because their node is down or no node took them."""
        if self.nodes is None:
            return []
        down = {n.name for n in self.down_nodes}
        waiting = self.nodes.unscheduled > 0  # a pod without a node is one no node took only then
        return [p for p in self.pods if not p.ready and (p.node in down if p.node else waiting)]

    def answers_directly(self, dependency: str) -> bool | None:
        """Whether a dependency answered its direct probe (None: not probed)."""
        found = next((outcome for name, outcome, _ in self.reached if name == dependency), None)
        return None if found is None else found == "ok"

    def reach_detail(self, dependency: str) -> str:
        return next((detail for name, _, detail in self.reached if name == dependency), "not probed")

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
    health_facts = health.facts(HealthFacts) if health is not None else None
    rollout, rate = _usable(findings, ROLLOUT, RolloutFacts), _usable(findings, RATE, RateFacts)
    deploys = findings[DEPLOYS].facts(DeploysFacts) if DEPLOYS in findings else DeploysFacts()
    pods_known = rollout is not None and bool(rollout.model_fields_set)
    pods = tuple(Pod(p.name, p.ready, p.restarts, p.waiting, p.image, p.last_termination, p.node)
                 for p in rollout.pods) if rollout else ()
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
        history=tuple(r for r in map(_release, deploys.revisions) if r is not None),
        error_rate=rate.rate if rate else None, threshold=threshold,
        request_rps=rate.rps if rate else None,
        capacity_rps=ready * capacity_per_replica if capacity_per_replica and pods_known else None,
        traffic=traffic,
        breaker=breaker.facts(BreakerFacts).value if breaker is not None and breaker.ok else None,
        autoscaler=rollout.autoscaler if rollout else None, memory_limit=rollout.memory_limit if rollout else None,
        config_changes=_config_changes(findings), reached=_reached(findings),
        slow=_slow(health_facts, _usable(findings, LATENCY, LatencyFacts)),
        slo_ms=(health_facts.slo_ms if health_facts else None) or _latency_slo(findings),
        nodes=_usable(findings, NODES, NodeFacts),
        usage=_usable(findings, USAGE, UsageFacts),
        full_volumes=_full_volumes(findings))


def _full_volumes(findings: Mapping[str, Finding]) -> tuple[tuple[str, float], ...]:
    volumes = _usable(findings, VOLUMES, VolumeFacts)
    return tuple((v.claim, v.used_ratio or 0.0) for v in volumes.full()) if volumes else ()


def _slow(health: HealthFacts | None, latency: LatencyFacts | None) -> tuple[tuple[str, int], ...]:
    """Answers slower than the objective: each slow probe, and all requests' p99 from Prometheus."""
    slow = [(p.url, p.ms or 0) for p in health.slow] if health else []
    if latency and latency.p99_ms is not None and latency.slo_ms and latency.p99_ms > latency.slo_ms:
        slow.append(("p99 of all requests (Prometheus)", round(latency.p99_ms)))
    return tuple(slow)


def _latency_slo(findings: Mapping[str, Finding]) -> float | None:
    latency = _usable(findings, LATENCY, LatencyFacts)
    return latency.slo_ms if latency else None


def _reached(findings: Mapping[str, Finding]) -> tuple[tuple[str, str, str], ...]:
    network = _usable(findings, NETWORK, NetworkFacts)
    return tuple((r.name, r.outcome, r.detail) for r in network.dependencies) if network else ()


def _config_changes(findings: Mapping[str, Finding]) -> tuple[tuple[str, datetime], ...]:
    config = _usable(findings, CONFIG, ConfigFacts)
    stamped = ((f"{c.kind}/{c.name}", _parse(c.changed_at)) for c in (config.objects if config else []))
    return tuple((name, at) for name, at in stamped if at is not None)


def age(seconds: float) -> str:
    minutes = int(abs(seconds) // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(abs(seconds)) % 60:02d}s"


def settle(head: Plan, actions: list[PlannedAction], confidence: Confidence, weighing: Weighing, summary: str,
           handover: str | None = None, weak_safe: frozenset[ActionKind] = frozenset()) -> Plan:
    """The plan a rule may offer: its actions with their confidence and evidence; a weak choice
    that holds an action not safe when unsure (incidents/vocabulary.py; and `weak_safe`, what the rule showed safe
    here) becomes an abstention that says why."""
    from dataclasses import replace

    unsafe = sorted({a.kind for a in actions if a.kind not in SAFE_WHEN_UNSURE | weak_safe})
    if confidence == Confidence.WEAK and unsafe:
        return replace(head, actions=(), confidence=Confidence.NONE, support=tuple(weighing.support),
                       against=tuple(weighing.against),
                       summary=f"Abstaining: {summary} But the evidence is weak, and {', '.join(unsafe)} is not "
                               f"safe to try on weak evidence: a person must decide.")
    if not actions and confidence != Confidence.STRONG:
        confidence = Confidence.NONE
    return replace(head, actions=tuple(actions), confidence=confidence, support=tuple(weighing.support),
                   against=tuple(weighing.against), summary=summary, handover=handover)


def abstain(head: Plan, weighing: Weighing, reason: str) -> Plan:
    """No plan: the evidence conflicts or names no cause a remedy here fixes."""
    return settle(head, [], Confidence.NONE, weighing,
                  f"Abstaining: {reason} No change is planned; a person must look.")


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
    if previous is not None and old is not None and old.requests and _clean_rate(facts, old) is None \
            and _began_with(facts, previous, window_seconds) and _failed_from_start(facts, previous, new):
        weighing.add(True, f"the revision before it ({previous.version}) failed too ({old.lifetime_rate:.0%} errors), "
                           f"and the failure began with it: both came with the failure")
    elif previous is not None and old is not None and old.requests and _rose_with(facts, old, new):
        weighing.add(True, f"the revision before it ({previous.version}) served with {old.lifetime_rate:.1%} errors, "
                           f"a fraction of the {new.window_rate if new else 0:.0%} {release.version} fails now: the "
                           "errors rose with it")
    elif previous is not None and old is not None and old.requests:
        clean = _clean_rate(facts, old)
        weighing.add(clean is not None,
                     f"the revision before it ({previous.version}) served with {old.lifetime_rate:.1%} errors"
                     + (f", all of them the overload's ({facts.overload_share:.0%} of requests cannot be served)"
                        if clean == "overload" else ""),
                     f"the revision before it ({previous.version}) failed too ({old.lifetime_rate:.0%} errors): "
                     f"the errors are not new with {release.version}")
    lag = facts.since_rollout(release)
    if lag is not None:
        if lag < -CLOCK_SKEW_SECONDS:
            supported = _began_before(facts, release, new, window_seconds, weighing) or supported
        elif lag > window_seconds:
            weighing.add(False, "", f"the failure began {age(lag)} after {release.describe()} went live: a bad "
                                    f"release fails within {age(window_seconds)}")
        else:
            supported = weighing.add(True, f"the failure began {age(max(lag, 0))} after {release.describe()} went live")
    return supported and len(weighing.against) == before


def _rose_with(facts: ServiceFacts, old: Traffic, new: Traffic | None) -> bool:
    """The revision before was not clean, but the new one fails several times as often: the
    errors rose with it (a revision live for seconds carries its own rollout's gap in its record)."""
    return (_clean_rate(facts, old) is None and new is not None and bool(new.window_requests)
            and old.lifetime_rate < ROSE_WITH_RELEASE * new.window_rate)


def _clean_rate(facts: ServiceFacts, traffic: Traffic) -> str | None:
    """Whether a revision served cleanly by its own record: "clean" below the error threshold,
    "overload" when its errors are no more than the share of requests the overload fails
    (measured now, under the same load), None when it failed on its own."""
    threshold = facts.threshold if facts.threshold is not None else CLEAN_ERROR_RATE
    if traffic.lifetime_rate < threshold:
        return "clean"
    if facts.overload_share and traffic.lifetime_rate - facts.overload_share < threshold:
        return "overload"
    return None


def rollback_target(facts: ServiceFacts, release: Release, window_seconds: float,
                    weighing: Weighing) -> Release | None:
    """The revision to roll `release` back to: the newest one before it with a record of serving
    cleanly -- never merely the previous one, which may have failed too (two bad releases in a
    row). A revision's record is its own traffic (requests at an error rate below the threshold,
    or no more than the overload's share) when the error rate was measured per version;
    otherwise it counts as having served when it was live at least `window_seconds` (the time a
    bad release takes to fail) before the next one replaced it. Adds why revisions were passed
    over to `weighing`; None when no revision has such a record."""
    replaced_at, passed = release.went_live, list[str]()
    for candidate in (r for r in facts.history if r.revision < release.revision):
        served = _served(facts, candidate, replaced_at, window_seconds)
        if served is None:
            if passed:
                weighing.add(True, f"revision {candidate.revision} ({candidate.version}) is the last that served "
                                   f"cleanly; passed over: {'; '.join(passed)}")
            return candidate
        passed.append(served)
        replaced_at = candidate.went_live
    weighing.against.append("no earlier revision has a record of serving cleanly"
                            + (f" ({'; '.join(passed)})" if passed else ""))
    return None


def failed_since_live(facts: ServiceFacts, release: Release) -> bool:
    """`release` fails now and has failed about as much over its whole life, by its own traffic:
    it never served cleanly (a healthy release that a later fault broke did, for a while)."""
    new = facts.traffic_of(release.version)
    return (new is not None and bool(new.window_requests) and new.window_rate >= (facts.threshold or 0.0)
            and new.lifetime_rate >= 0.5 * new.window_rate)


def recently_clean(facts: ServiceFacts, target: Release, seconds: float) -> bool:
    """`target` served cleanly by its own traffic and was serving until less than `seconds` ago
    (every revision after it went live since): a rollback to it brings back what served
    minutes ago, as safe as a restart."""
    traffic = facts.traffic_of(target.version)
    if traffic is None or not traffic.requests or _clean_rate(facts, traffic) is None:
        return False
    after = [r.went_live for r in facts.history if r.revision > target.revision]
    return bool(after) and all(t is not None and (facts.now - t).total_seconds() <= seconds for t in after)


def _served(facts: ServiceFacts, candidate: Release, replaced_at: datetime | None, window: float) -> str | None:
    """None when `candidate` has a record of serving cleanly, else why not."""
    traffic = facts.traffic_of(candidate.version)
    if traffic is not None and traffic.requests:
        if _clean_rate(facts, traffic) is not None:
            return None
        return f"revision {candidate.revision} ({candidate.version}) failed {traffic.lifetime_rate:.0%} of its " \
               f"{traffic.requests:g} requests"
    if candidate.went_live is None or replaced_at is None:
        return None  # no times to judge by: the history's order is all there is
    live = (replaced_at - candidate.went_live).total_seconds()
    if live >= window:
        return None
    return f"revision {candidate.revision} ({candidate.version}) was live only {age(live)} before it was replaced" \
           + (", and no request it served is recorded" if facts.traffic else "")


def _began_with(facts: ServiceFacts, revision: Release, window: float) -> bool:
    """The failure began within `window` after `revision` went live (not before it)."""
    if facts.onset is None or revision.went_live is None:
        return False
    return -CLOCK_SKEW_SECONDS <= (facts.onset - revision.went_live).total_seconds() <= window


def _failed_from_start(facts: ServiceFacts, revision: Release, new: Traffic | None) -> bool:
    """An earlier revision failed from its start about as much as the newest fails now, by its own
    traffic (no traffic recorded: nothing says otherwise). One that served cleanly for a while
    before the failure began (a healthy release, then a fault no check sees) does not."""
    old = facts.traffic_of(revision.version)
    if old is None or not old.requests or new is None or not new.window_requests:
        return True
    return old.lifetime_rate >= FAILED_FROM_START * new.window_rate


def _began_before(facts: ServiceFacts, release: Release, new: Traffic | None, window: float,
                  weighing: Weighing) -> bool:
    """The failure began before `release` went live. That speaks against it, unless the onset is
    explained without clearing it: an earlier revision went live just before the onset and
    `release` replaced it (two bad releases in a row: both are rolled back), or the onset was the
    overload's and `release` fails more than the overload on its own."""
    assert facts.onset is not None
    lag = facts.since_rollout(release) or 0.0
    began = next((r for r in facts.history if r.revision < release.revision and _began_with(facts, r, window)
                  and _failed_from_start(facts, r, new)), None)
    if began is not None and began.went_live is not None:
        return weighing.add(True, f"the failure began {age(max((facts.onset - began.went_live).total_seconds(), 0))} "
                                  f"after {began.describe()} went live, and {release.describe()} replaced it "
                                  f"{age(-lag)} into the failure: both came with it")
    threshold = facts.threshold or 0.0
    own = new.window_rate - facts.overload_share if new is not None and new.window_requests else 0.0
    if facts.overload_share and own >= threshold:
        return weighing.add(True, f"the failure began {age(lag)} before {release.describe()} went live, with the "
                                  f"overload ({facts.overload_share:.0%} of requests cannot be served); "
                                  f"{release.version} fails {own:.0%} more on its own")
    weighing.add(False, "", f"the failure began {age(lag)} before {release.describe()} went live")
    return False


def config_behind(facts: ServiceFacts, release: Release, window_seconds: float) -> str | None:
    """A revision that rolled out no new image (a restart, or a change of the pod template
    alone) with a ConfigMap or Secret the pods read changed shortly before it: that change is
    the suspect, and a rollback of the deployment does not undo it. What was found, or None."""
    if facts.previous is None or release.image != facts.previous.image or release.went_live is None:
        return None
    went_live = release.went_live
    changed = [(name, (went_live - at).total_seconds()) for name, at in facts.config_changes
               if -CLOCK_SKEW_SECONDS <= (went_live - at).total_seconds() <= window_seconds]
    if not changed:
        return None
    return "; ".join(f"{name} changed {age(max(ago, 0))} before {release.describe()} rolled out with the same image "
                     f"as revision {facts.previous.revision}" for name, ago in changed)
