"""security-incident end to end: evidence first, containment behind the approval, and secret
values (a canary and the new ones) nowhere outside the Kubernetes API."""

from __future__ import annotations

import base64
import json

import psycopg
import pytest

from tests.conftest import FlowThread, read_all

pytestmark = pytest.mark.usefixtures("prefect_server")

CANARY = "CANARY-5f1e9a7c-old-token-value"
ALERT = {"labels": {"alertname": "SuspiciousLogins", "service": "api"},
         "annotations": {"suspicious_ips": "203.0.113.7, 198.51.100.0/24", "summary": "credential stuffing"},
         "fingerprint": "sec-1", "startsAt": "2026-11-26T03:00:00Z"}


def _secret_values(world) -> dict[str, str]:
    data = world.cluster.get("secrets", "sandbox", "api-credentials")["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


def _plant_canary(world) -> None:
    world.cluster.patch("secrets", "sandbox", "api-credentials",
                        {"data": {"token": base64.b64encode(CANARY.encode()).decode()}}, "application/merge-patch+json")


def _everything_written(world, database_url: str, result: dict) -> str:
    """Every place the runbook writes to, as one text to search."""
    from prefect.client.orchestration import get_client

    parts = [json.dumps(world.slack_messages), json.dumps(result, default=str)]
    for repo in world.github.repos.values():
        parts += [json.dumps(repo.issues), json.dumps(repo.comments)]
    with get_client(sync_client=True) as client:
        parts += [json.dumps(a.data, default=str) for a in read_all(client.read_artifacts)]
        parts += [log.message for log in read_all(client.read_logs)]
    with psycopg.connect(database_url) as conn:
        for table in ("incidents", "timeline_events", "approvals"):
            parts += [str(row) for row in conn.execute(f"SELECT t::text FROM {table} t").fetchall()]
    return "\n".join(parts)


def test_approved_containment_rotates_blocks_and_logs_without_leaking(world, store, database_url):
    from flows.security_incident import security_incident

    _plant_canary(world)
    restarted_before = world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["metadata"].get(
        "annotations"
    )
    run = FlowThread(security_incident, service="api", alert=ALERT)
    paused = run.wait_paused()
    assert _secret_values(world)["token"] == CANARY, "nothing may change before the approval"
    run.resume(paused.id, approve=True, approver="ivan", reason="contain now")
    result = run.join()
    assert result["outcome"] == "resolved", result

    values = _secret_values(world)
    assert values["token"] != CANARY and len(values["token"]) >= 32 and values["api-key"] != "sandbox-key"
    template = world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["metadata"]
    assert template.get("annotations") != restarted_before
    assert "kubectl.kubernetes.io/restartedAt" in template["annotations"], "consumers restart after rotation"
    policy = world.cluster.get("networkpolicies", "sandbox", "block-suspicious-ips")
    assert policy["spec"]["ingress"][0]["from"][0]["ipBlock"]["except"] == ["198.51.100.0/24", "203.0.113.7/32"]
    assert world.cluster.get("configmaps", "sandbox", "api-config")["data"]["log_level"] == "debug"

    security = [m for m in world.slack_messages if m["channel"] == "C0SANDSEC"]
    assert security and security[0]["text"].startswith("🔐 SECURITY INCIDENT")
    timeline = store.timeline(result["incident_id"])
    kinds = [e.kind for e in timeline]
    assert kinds.index("evidence_captured") < kinds.index("approval_requested") < kinds.index("action")
    assert "public_draft" in kinds
    logging_action = next(e for e in timeline if e.kind == "action" and "log_level" in e.message)
    assert "info -> debug" in logging_action.message

    written = _everything_written(world, database_url, result)
    for secret in (CANARY, values["token"], values["api-key"]):
        assert secret not in written
        assert base64.b64encode(secret.encode()).decode() not in written


def test_evidence_and_public_draft_are_artifacts(world):
    from prefect.client.orchestration import get_client

    from flows.security_incident import security_incident

    result = FlowThread(security_incident, service="api", alert=ALERT, dry_run=True).join(60)
    assert result["outcome"] == "dry_run"
    assert [a.split()[0] for a in result["plan"]] == ["rotate_secrets", "block_ips", "enable_logging"]
    with get_client(sync_client=True) as client:  # every page: the suite makes more than one read returns
        artifacts = {a.key: a for a in read_all(client.read_latest_artifacts)}
    evidence = artifacts[f"incident-{result['incident_id']}-evidence"].data
    assert "secret api-credentials \\(Opaque\\): keys api-key, token" in evidence and "## Plan" not in evidence
    draft = artifacts[f"incident-{result['incident_id']}-public-draft"].data
    assert draft.startswith("## DRAFT") and "not published" in draft
    assert world.cluster.get("configmaps", "sandbox", "api-config")["data"]["log_level"] == "info"


def test_declined_containment_changes_nothing(world):
    from flows.security_incident import security_incident

    before = _secret_values(world)
    run = FlowThread(security_incident, service="api", alert=ALERT)
    paused = run.wait_paused()
    run.resume(paused.id, approve=False, approver="judy", reason="false positive: pen test")
    assert run.join()["outcome"] == "declined"
    assert _secret_values(world) == before
    assert world.cluster.get("configmaps", "sandbox", "api-config")["data"]["log_level"] == "info"
    assert not world.cluster.list("networkpolicies", "sandbox")


@pytest.mark.parametrize("bad, reason", [("10.0.0.300", "invalid CIDR '10.0.0.300'"),
                                         ("0.0.0.0/0", "broader than /16"),
                                         ("198.0.0.0/8", "broader than /16"),
                                         ("127.0.0.1", "overlaps 127.0.0.0/8"),
                                         ("10.0.0.0/8", "broader than /16"),
                                         ("10.1.2.3", "private"),
                                         ("172.20.0.0/16", "overlaps 172.16.0.0/12"),
                                         ("192.168.1.0/24", "overlaps 192.168.0.0/16"),
                                         ("100.64.1.1", "overlaps 100.64.0.0/10"),
                                         ("169.254.169.254", "link-local"),
                                         ("fd00::1", "overlaps fc00::/7"),
                                         ("2001:db8::/32", "broader than /48"),
                                         ("::ffff:0:0/96", "broader than /16"),            # IPv4-mapped: all IPv4
                                         ("::ffff:10.0.0.0/104", "broader than /16"),
                                         ("::ffff:10.1.2.3", "private"),
                                         ("::ffff:0:a01:203/128", "private"),              # IPv4-translated
                                         ("64:ff9b::/96", "broader than /16"),             # NAT64
                                         ("64:ff9b::a01:203", "private"),
                                         ("2002::/16", "broader than /16"),                # 6to4
                                         ("2002:a01:203::/48", "private"),
                                         ("2001::/32", "carries IPv4"),                     # Teredo
                                         ("64:ff9b:1::/48", "carries IPv4")])
def test_an_invalid_cidr_is_dropped_with_its_reason_and_the_rest_kept(bad, reason):
    """One bad value in a P0 alert must not stop the containment of the others
    (tests/test_correlation.py runs the whole runbook with one)."""
    from incidents.alerts import AlertParameter
    from incidents.security_rules import suspicious_cidrs

    alert = {**ALERT, "annotations": {"suspicious_ips": f"203.0.113.7, {bad}"}}
    kept, dropped = suspicious_cidrs(AlertParameter.model_validate(alert))
    assert kept == ["203.0.113.7/32"]
    assert len(dropped) == 1 and reason in dropped[0]


def test_an_ipv4_address_written_in_ipv6_is_blocked_as_the_ipv4_address_it_is():
    from incidents.security_rules import validate_cidr

    assert validate_cidr("::ffff:198.51.100.9") == "198.51.100.9/32"
    assert validate_cidr("64:ff9b::c633:6409") == "198.51.100.9/32"
    assert validate_cidr("2002:c633:6400::/40") == "198.51.100.0/24"
    assert validate_cidr("2001:db8:1:2::7") == "2001:db8:1:2::7/128"
