"""Diagnosis checks. Each is a task with its own timeout that returns a Finding; a check
that cannot reach what it checks says so in its Finding instead of failing the run."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from prefect.exceptions import TerminationSignal
from prefect.futures import PrefectFuture

from incidents.check_facts import (
    CONFIG,
    DEPLOYS,
    HEALTH,
    NETWORK,
    POD_LOGS,
    ROLLOUT,
    RUN_LOGS,
    Autoscaler,
    ConfigChange,
    ConfigFacts,
    DeploysFacts,
    HealthFacts,
    NetworkFacts,
    PodFacts,
    PodLogsFacts,
    Probe,
    Reached,
    Revision,
    RolloutFacts,
    RunLogsFacts,
    WorkflowRun,
)
from incidents.findings import Finding, unavailable
from incidents.redaction import redact
from integrations import parallel
from integrations.errors import IntegrationError
from integrations.probes import error_metrics, probe_all
from integrations.reach import reach
from tasks.context import RunContext, SecretNotFound
from tasks.steps import run_logger, step

_CHECK_ERRORS = (IntegrationError, SecretNotFound)


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _age(stamp: str) -> str:
    minutes = int((datetime.now(timezone.utc) - _parse(stamp)).total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


@step("probe-endpoints")
def probe_endpoints(urls: list[str], timeout: float = 5.0, slo_ms: float | None = None) -> Finding:
    """`curl -f` of every endpoint at once; the check takes as long as the slowest probe. With a
    latency objective, an answer slower than it is a finding: slow is not down."""
    results = probe_all(urls, timeout)
    failing = [r for r in results if not r.ok]
    details = tuple(r.describe() for r in results)
    probes = [Probe(url=r.url, ok=r.ok, status=r.status, ms=round(r.seconds * 1000)) for r in results]
    data: dict[str, Any] = {"results": probes}
    slow = [p for p in probes if slo_ms and p.ok and p.ms is not None and p.ms > slo_ms]
    if slo_ms:
        data.update(slo_ms=slo_ms, slow=slow)
    failing_checks = sorted({name for r in results if isinstance(r.body, dict)
                             for name, check in (r.body.get("checks") or {}).items()
                             if isinstance(check, dict) and check.get("status") not in (None, "ok")})
    if failing_checks:
        data["failing_checks"] = failing_checks
        details += (f"/health reports failing checks: {', '.join(failing_checks)}",)
    for r in results:
        metrics = error_metrics(r.body) if r.ok else None
        if metrics:
            data["error_rate"] = round(metrics.error_rate, 4)
            details += (f"metrics: {metrics.errors:g} errors of {metrics.requests:g} requests",)
    if failing:
        summary = f"{len(failing)} of {len(results)} endpoints failing"
    else:
        summary = f"all {len(results)} endpoints answer"
    if slow:
        summary += f"; {len(slow)} slower than the {slo_ms:g} ms objective (up to {max(p.ms or 0 for p in slow)} ms)"
    return Finding(HEALTH, not failing, summary, details, HealthFacts(**data))


@step("check-rollout")
def check_rollout(ctx: RunContext) -> Finding:
    """Rollout status by kubectl's rules, pods with restarts and last termination, recent events."""
    target = ctx.service.kubernetes
    try:
        with ctx.kubernetes() as kube:
            view = kube.deployment(target.namespace, target.deployment)
            status = view.rollout
            pods = kube.pods(target.namespace, target.deployment)
            events = kube.events(target.namespace, {target.deployment, *(p.name for p in pods)}, limit=8)
            autoscaler = kube.autoscaler_of(target.namespace, target.deployment)
    except _CHECK_ERRORS as exc:
        return unavailable(ROLLOUT, exc)
    crashing = [p for p in pods if p.waiting_reason in ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull")
                or (not p.ready and p.restarts)]
    ready = sum(p.ready for p in pods)
    details = (status.message,) + tuple(
        f"pod {p.name}: {'ready' if p.ready else 'NOT ready'}, {p.restarts} restarts"
        + (f", waiting: {p.waiting_reason}" if p.waiting_reason else "")
        + (f", last exit: {p.last_termination_reason} ({p.last_exit_code})" if p.last_termination_reason else "")
        for p in pods) + tuple(e.describe() for e in events)
    healthy = status.done and not crashing and ready == len(pods) and pods
    summary = f"{ready}/{len(pods)} pods ready; {status.message}"
    if autoscaler:
        summary += f"; scaled by HPA {autoscaler.name} ({autoscaler.min}-{autoscaler.max})"
    if crashing:
        summary += f"; {len(crashing)} pods crash-looping"
    oom = [p for p in pods if p.last_termination_reason == "OOMKilled"]
    if oom:
        summary += f"; {len(oom)} pods OOM-killed"
    container = view.container(target.container)
    return Finding(ROLLOUT, bool(healthy), summary, details, RolloutFacts(
        revision=view.revision, image=container.image,
        rollout_done=status.done, rollout_failed=status.failed, oom_killed=len(oom),
        memory_limit=container.memory_limit, desired_replicas=view.replicas,
        autoscaler=Autoscaler(name=autoscaler.name, min=autoscaler.min, max=autoscaler.max) if autoscaler else None,
        paused=view.paused,
        pods=[PodFacts(name=p.name, ready=p.ready, restarts=p.restarts, waiting=p.waiting_reason,
                       last_termination=p.last_termination_reason, image=p.image, node=p.node) for p in pods]))


@step("network-and-dns")
def network_reach(ctx: RunContext) -> Finding:
    """Each dependency the config names, probed directly, all at once: resolves, connects,
    answers; and if not, which of those failed."""
    deps = ctx.service.dependencies
    timeout = ctx.config.timeouts.probe_seconds
    found = parallel.map_all(lambda item: reach(item[0], item[1].url, timeout), deps.items(), name="reach")
    failing = [r for r in found if not r.ok]
    summary = ("; ".join(f"{r.name}: {r.detail}" for r in failing) if failing
               else f"{len(found)} dependencies answer directly" if found else "no dependencies configured")
    return Finding(NETWORK, not failing, summary, tuple(f"{r.name} ({r.url}): {r.outcome}, {r.detail}" for r in found),
                   NetworkFacts(dependencies=[Reached(name=r.name, outcome=r.outcome, detail=r.detail, status=r.status)
                                              for r in found]))


@step("config-changes")
def config_changes(ctx: RunContext) -> Finding:
    """The ConfigMaps and Secrets the pods read, and when each last changed (a config rolled by a
    restart breaks a service as a release does, and a rollback does not undo it)."""
    target = ctx.service.kubernetes
    window = ctx.config.timeouts.release_window_seconds
    try:
        with ctx.kubernetes() as kube:
            objects = [kube.last_changed(target.namespace, ref)
                       for ref in kube.deployment_config_refs(target.namespace, target.deployment)]
    except _CHECK_ERRORS as exc:
        return unavailable(CONFIG, exc)
    now = datetime.now(timezone.utc)
    recent = [o for o in objects if o.changed_at and (now - o.changed_at).total_seconds() <= window]
    details = tuple(f"{o.describe()}: " + (f"changed {_age(o.changed_at.isoformat())} ago" if o.changed_at
                                           else f"could not read ({o.error})") for o in objects)
    summary = (f"{', '.join(o.describe() for o in recent)} changed in the last {window / 60:g} min" if recent
               else f"no change in the last {window / 60:g} min to the {len(objects)} ConfigMaps and Secrets read")
    return Finding(CONFIG, not recent, summary, details, ConfigFacts(objects=[
        ConfigChange(kind=o.kind, name=o.name, changed_at=o.changed_at.isoformat() if o.changed_at else None,
                     error=o.error) for o in objects]))


@step("recent-deployments")
def recent_deployments(ctx: RunContext) -> Finding:
    """What changed in the window: ReplicaSet revisions and GitHub workflow runs (`gh run list`)."""
    hours = ctx.config.timeouts.recent_deploy_hours
    since = datetime.now(timezone.utc) - timedelta(hours=hours)
    target, repo = ctx.service.kubernetes, ctx.service.github.repo
    details: list[str] = []
    data: dict[str, Any] = {}
    try:
        with ctx.kubernetes() as kube:
            history = kube.revision_history(target.namespace, target.deployment)
    except _CHECK_ERRORS as exc:
        return unavailable(DEPLOYS, exc)
    revisions = [Revision(revision=r.revision, image=r.image, created=r.created, age=_age(r.created)) for r in history]
    data["revisions"] = revisions
    if revisions and _parse(history[0].created) >= since:
        data["recent_revision"] = revisions[0]
    if len(revisions) > 1:
        data["previous_revision"] = revisions[1]
    details += [f"revision {r.revision}: {r.image} ({r.age} ago)" for r in revisions[:4]]
    try:
        with ctx.github() as github:
            runs = github.workflow_runs(repo, since=since, per_page=10)
        data["runs"] = [WorkflowRun(id=r.id, title=r.display_title, workflow=r.name,
                                    conclusion=r.conclusion, created_at=r.created_at) for r in runs]
        details += [
            f"run {r.id} {r.name}: {r.display_title} -> {r.conclusion or r.status}"
            f" at {r.created_at}"
            for r in runs[:5]
        ]
    except _CHECK_ERRORS as exc:
        details.append(f"GitHub runs unavailable: {exc}")
    recent = data.get("recent_revision")
    summary = (f"revision {recent.revision} ({recent.image}) went live {recent.age} ago"
               if recent else f"no new revision in the last {hours:g} h")
    return Finding(DEPLOYS, recent is None, summary, tuple(details), DeploysFacts(**data))


@step("failed-run-logs")
def failed_run_logs(ctx: RunContext) -> Finding:
    """`gh run view --log-failed` for the newest failed run in the window."""
    since = datetime.now(timezone.utc) - timedelta(hours=ctx.config.timeouts.recent_deploy_hours)
    repo = ctx.service.github.repo
    try:
        with ctx.github() as github:
            failed = [
                r for r in github.workflow_runs(repo, since=since, per_page=20) if r.conclusion == "failure"
            ]
            logs = github.failed_job_logs(repo, failed[0].id) if failed else {}
    except _CHECK_ERRORS as exc:
        return unavailable(RUN_LOGS, exc)
    if not failed:
        return Finding(RUN_LOGS, True, "no failed workflow runs in the window")
    run = failed[0]
    excerpt = redact("\n".join(f"== {job} ==\n{text}" for job, text in logs.items()))
    return Finding(RUN_LOGS, False, f"run {run.id} ({run.display_title}) failed",
                   (f"{len(failed)} failed runs in the window",), RunLogsFacts(run_id=run.id), excerpt or None)


@step("pod-logs")
def pod_logs(ctx: RunContext, tail_lines: int = 30) -> Finding:
    """The log tail of a pod that is not ready (its previous container if it restarted)."""
    target = ctx.service.kubernetes
    try:
        with ctx.kubernetes() as kube:
            pods = kube.pods(target.namespace, target.deployment)
            if not pods:
                return Finding(POD_LOGS, False, "no pods to read logs from")
            pod = next((p for p in pods if not p.ready), pods[0])
            text = redact(kube.pod_logs(target.namespace, pod.name, target.container, tail_lines))
    except _CHECK_ERRORS as exc:
        return unavailable(POD_LOGS, exc)
    errors = [line for line in text.splitlines() if any(w in line for w in ("ERROR", "FATAL", "panic", "Exception"))]
    summary = f"{pod.name}: " + (errors[-1].split(" ", 1)[-1][:160] if errors else "no error lines")
    return Finding(POD_LOGS, not errors, summary, (), PodLogsFacts(pod=pod.name, error_lines=len(errors)), text)


def gather(futures: dict[str, PrefectFuture], timeout: float) -> dict[str, Finding]:
    """Wait for submitted checks; a check that failed or overran becomes an 'unavailable' Finding."""
    logger = run_logger()
    findings: dict[str, Finding] = {}
    for check, future in futures.items():
        try:
            findings[check] = future.result(timeout=timeout)
        except TerminationSignal:
            # Cancel: Prefect joins the checks' threads before the process ends; their waits on
            # probes end now instead of when the probes time out
            parallel.stop_waiting()
            raise
        except Exception as exc:  # noqa: BLE001 - a broken check must not hide the others
            logger.warning("Check %r did not complete: %s", check, exc)
            findings[check] = unavailable(check, f"{type(exc).__name__}: {exc}")
    return findings
