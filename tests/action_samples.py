"""One well-formed action of each kind and strategy, in the shapes the planners write, for
tests that need an action of some kind and do not care about its target."""

from __future__ import annotations

from typing import Any

from incidents.plans import PlannedAction

SAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "rollback by undo": ("rollback", {"namespace": "sandbox", "deployment": "api", "strategy": "kubernetes_undo",
                                      "from_revision": 3, "to_revision": 2, "to_image": "acme/api:v1.4.1"}),
    "rollback by workflow": ("rollback", {"namespace": "sandbox", "deployment": "api", "strategy": "github_workflow",
                                          "repo": "acme/api", "workflow": "rollback.yml", "ref": "main",
                                          "environment": "sandbox", "from_revision": 3, "to_revision": 2,
                                          "to_image": "acme/api:v1.4.1"}),
    "restart at a revision": ("rollout_restart", {"namespace": "sandbox", "deployment": "api", "revision": 2}),
    "restart of a database": ("rollout_restart", {"namespace": "sandbox", "deployment": "database"}),
    "scale": ("scale", {"namespace": "sandbox", "deployment": "api", "from": 3, "to": 6}),
    "scale an hpa": ("scale", {"namespace": "sandbox", "deployment": "api", "hpa": "api", "from": 2, "to": 5,
                               "max": 8}),
    "circuit breaker": ("circuit_breaker", {"namespace": "sandbox", "configmap": "api-flags",
                                            "redis_url_secret": None, "key": "circuit_breaker", "value": "on",
                                            "previous": "off"}),
    "terminate a root blocker": ("terminate_sessions", {
        "sessions": [[4242, "2026-11-29T00:01:02.345678+00:00"]], "allow_superuser": False, "waiters": [4243, 4244],
        "expect": {"4242": {"state": "idle in transaction", "seconds": 61.3, "clock": "state"}}}),
    "cancel queries": ("cancel_queries", {
        "sessions": [[4250, "2026-11-29T00:01:02.345678+00:00"]], "allow_superuser": False,
        "expect": {"4250": {"state": "active", "seconds": 320.0, "clock": "query"}}}),
    "clear a prefix": ("clear_cache", {"mode": "prefix", "prefix": "api:", "keys": 1200}),
    "rotate a secret": ("rotate_secrets", {"namespace": "sandbox", "secret": "api-credentials",
                                           "keys": ["DB_PASSWORD", "API_KEY"], "consumers": ["api"],
                                           "resource_version": "17"}),
    "deny at the ingress": ("block_ips", {"strategy": "ingress_denylist", "namespace": "sandbox", "ingress": "api",
                                          "cidrs": ["203.0.113.7/32"], "existing": []}),
    "block by policy": ("block_ips", {"strategy": "network_policy", "namespace": "sandbox", "policy": "block-api",
                                      "app": "api", "cidrs": ["203.0.113.7/32"], "labels": {"app": "api"},
                                      "existing": ["198.51.100.0/24"]}),
    "raise the log level": ("enable_logging", {"namespace": "sandbox", "configmap": "api-config", "key": "log_level",
                                               "level": "debug", "previous": "info"}),
}


def sample_action(name_or_kind: str, **changes: Any) -> PlannedAction:
    """The sample named, or the first of that kind; `changes` replace its parameters."""
    kind, params = SAMPLES.get(name_or_kind) or next(s for s in SAMPLES.values() if s[0] == name_or_kind)
    return PlannedAction(kind, "target", "before", "after", "via", {**params, **changes})
