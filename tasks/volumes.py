"""The checklist's disk item: how full each PersistentVolumeClaim the service's pods mount is,
from the kubelet's volume stats (`kubelet_volume_stats_*`, scraped by Prometheus). A full
volume fails the service's writes whatever version runs, and nothing a runbook does here frees
or grows it: the finding names it so that a person can."""

from __future__ import annotations

from incidents.check_facts import VOLUMES, VolumeFacts, VolumeUse
from incidents.findings import Finding, unavailable
from integrations.errors import IntegrationError
from tasks.context import NotConfigured, RunContext, SecretNotFound
from tasks.steps import step

FULL_AT = 0.9  # of a claim's capacity: a volume this full is a finding


def _line(volume: VolumeUse) -> str:
    if volume.used_ratio is None:
        return f"{volume.claim}: no volume stats found"
    return f"{volume.claim}: {volume.used_ratio:.0%} used"


@step("volume-usage")
def volume_usage(ctx: RunContext) -> Finding:
    """Each claim the pods mount, how full (ok False from FULL_AT); no claim: nothing to check."""
    k = ctx.service.kubernetes
    try:
        with ctx.kubernetes() as kube:
            claims = kube.deployment_volume_claims(k.namespace, k.deployment)
    except (IntegrationError, SecretNotFound, OSError, ValueError) as exc:
        return unavailable(VOLUMES, exc)
    if not claims:
        return Finding(VOLUMES, True, "the pods mount no volume claim", data=VolumeFacts(full_at=FULL_AT))
    prom = ctx.config.prometheus
    if prom is None:
        return unavailable(VOLUMES, NotConfigured(f"environment {ctx.environment!r} has no prometheus settings (the "
                                                  f"kubelet's volume stats of {', '.join(claims)} are read there)"))
    query = prom.volume_query.format(namespace=k.namespace)
    try:
        with ctx.prometheus() as client:
            series = client.query(query)
    except IntegrationError as exc:
        return unavailable(VOLUMES, exc)
    used = {labels.get("persistentvolumeclaim"): value for labels, value in series}
    facts = VolumeFacts(volumes=[VolumeUse(claim=c, used_ratio=used.get(c)) for c in claims], full_at=FULL_AT)
    full = facts.full()
    known = [v for v in facts.volumes if v.used_ratio is not None]
    ok = False if full else True if known else None
    summary = (f"volume claim {', '.join(_line(v) for v in full)}: writes fail when it fills" if full
               else "; ".join(_line(v) for v in facts.volumes))
    return Finding(VOLUMES, ok, summary, (query, *(_line(v) for v in facts.volumes)), facts)
