"""The checklist's resource item: CPU and memory each pod uses (the metrics API) against what its
container requests and may use. A pod near its memory limit is about to be OOM-killed; pods far
above their CPU request while requests fail are saturated (more replicas help, a rollback not)."""

from __future__ import annotations

from incidents.check_facts import USAGE, PodUsageFacts, UsageFacts
from incidents.findings import Finding, unavailable
from integrations.errors import IntegrationError
from integrations.kubernetes_usage import BadQuantity
from tasks.context import RunContext, SecretNotFound
from tasks.steps import step

# a pod at this share of its memory limit is one allocation away from an OOM kill
MEMORY_NEAR_LIMIT = 0.9


def _percent(used: float | None, of: float | None) -> str:
    return f" ({used / of:.0%} of {of:g})" if used is not None and of else ""


def summarize(facts: UsageFacts) -> tuple[bool | None, str, tuple[str, ...]]:
    """(ok, summary, details): not ok when a pod is near its memory limit or at its CPU limit."""
    if not facts.pods:
        return None, "no pod has a sample (none runs, or their node does not report)", ()
    cpu, memory = facts.cpu_peak_m or 0.0, facts.memory_peak_mi or 0.0
    said = [f"CPU up to {cpu:g}m per pod" + (f", {cpu / facts.cpu_request_m:.1f}x its {facts.cpu_request_m:g}m "
                                              "request" if facts.cpu_request_m else ""),
            f"memory up to {memory:g}Mi" + (f" of its {facts.memory_limit_mi:g}Mi limit "
                                            f"({memory / facts.memory_limit_mi:.0%})" if facts.memory_limit_mi else "")]
    near = bool(facts.memory_limit_mi) and memory >= MEMORY_NEAR_LIMIT * (facts.memory_limit_mi or 0)
    throttled = bool(facts.cpu_limit_m) and cpu >= 0.9 * (facts.cpu_limit_m or 0)
    details = tuple(f"pod {p.pod}: CPU {p.cpu_m:g}m{_percent(p.cpu_m, facts.cpu_request_m)}, memory "
                    f"{p.memory_mi:g}Mi{_percent(p.memory_mi, facts.memory_limit_mi)}" for p in facts.pods)
    return not (near or throttled), "; ".join(said), details


@step("resource-usage")
def resource_usage(ctx: RunContext) -> Finding:
    """The pods' CPU and memory from the metrics API, against the container's requests and limits."""
    target = ctx.service.kubernetes
    try:
        with ctx.kubernetes() as kube:
            res, usage = kube.deployment_usage(target.namespace, target.deployment, target.container)
    except IntegrationError as exc:
        hint = " (no metrics API is served: is metrics-server installed?)" if exc.status == 404 else ""
        return unavailable(USAGE, f"{exc}{hint}")
    except (SecretNotFound, BadQuantity) as exc:
        return unavailable(USAGE, exc)
    facts = UsageFacts(pods=[PodUsageFacts(pod=u.pod, cpu_m=round(u.cpu_m, 1), memory_mi=round(u.memory_mi, 1))
                             for u in usage],
                       cpu_request_m=res.cpu_request_m, cpu_limit_m=res.cpu_limit_m,
                       memory_request_mi=res.memory_request_mi, memory_limit_mi=res.memory_limit_mi)
    ok, summary, details = summarize(facts)
    return Finding(USAGE, ok, summary, details, facts)
