"""Kubernetes RBAC for the sandbox's API: bearer tokens name users, and a ServiceAccount's
request is allowed only when a Role or ClusterRole bound to it grants the request's verb on its
resource, as the API server's RBAC authorizer decides (kubernetes.io, "Using RBAC
Authorization"): rules are additive, a RoleBinding grants its role's rules in its own namespace
only, a ClusterRoleBinding everywhere; `*` matches any verb, group or resource; a rule naming
`resourceNames` matches only requests for those names.

The RBAC objects are read from the rendered manifests the project ships
(`kubectl kustomize deploy/kubernetes/overlays/<name>`), never copied. Every request a
ServiceAccount makes is recorded (`Ledger`), so a test can compare what the suite used with
what the Role grants."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
ADMIN = "kubernetes-admin"  # the sandbox's cluster admin (system:masters): not authorized rule by rule


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class Attributes:
    """What a request asks for, as the authorizer sees it."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def grant(self) -> tuple[str, str, str, str]:
        """(verb, group, resource[/subresource], namespace): what the ledger keeps."""
        return (self.verb, self.group, self.resource + (f"/{self.subresource}" if self.subresource else ""),
                self.namespace)

    def forbidden_message(self, user: str) -> str:
        what = f'{self.resource}{"." + self.group if self.group else ""}'
        target = f' "{self.name}"' if self.name else ""
        resource = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f' in the namespace "{self.namespace}"' if self.namespace else " at the cluster scope"
        return (f'{what}{target} is forbidden: User "{user}" cannot {self.verb} resource "{resource}" '
                f'in API group "{self.group}"{where}')


@dataclass(frozen=True)
class Rule:
    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str] = frozenset()

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Rule:
        return cls(frozenset(raw.get("verbs") or ()), frozenset(raw.get("apiGroups") or ()),
                   frozenset(raw.get("resources") or ()), frozenset(raw.get("resourceNames") or ()))

    def allows(self, a: Attributes) -> bool:
        resource = a.resource + (f"/{a.subresource}" if a.subresource else "")
        return (("*" in self.verbs or a.verb in self.verbs)
                and ("*" in self.groups or a.group in self.groups)
                and ("*" in self.resources or resource in self.resources)
                and (not self.names or a.name in self.names))


@dataclass
class Rbac:
    """The Roles, ClusterRoles and their bindings of one rendered manifest set."""

    roles: dict[tuple[str, str], list[Rule]] = field(default_factory=dict)  # (namespace or "", name)
    # (binding namespace or "" for a ClusterRoleBinding, role key, subject user)
    bindings: list[tuple[str, tuple[str, str], str]] = field(default_factory=list)

    @classmethod
    def from_manifests(cls, text: str) -> Rbac:
        rbac = cls()
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            kind, meta = doc.get("kind"), doc.get("metadata") or {}
            if kind in ("Role", "ClusterRole"):
                key = (meta.get("namespace", "") if kind == "Role" else "", meta["name"])
                rbac.roles[key] = [Rule.of(r) for r in doc.get("rules") or []]
            elif kind in ("RoleBinding", "ClusterRoleBinding"):
                ref = doc["roleRef"]
                namespace = meta.get("namespace", "") if kind == "RoleBinding" else ""
                role = (namespace if ref["kind"] == "Role" else "", ref["name"])
                for subject in doc.get("subjects") or []:
                    rbac.bindings.append((namespace, role, _user_of(subject)))
        return rbac

    def rules_for(self, user: str, namespace: str) -> Iterable[Rule]:
        for bound_in, role, subject in self.bindings:
            if subject == user and (bound_in == "" or bound_in == namespace):
                yield from self.roles.get(role, [])

    def allows(self, user: str, a: Attributes) -> bool:
        return any(rule.allows(a) for rule in self.rules_for(user, a.namespace))


def _user_of(subject: dict[str, Any]) -> str:
    if subject.get("kind") == "ServiceAccount":
        return service_account_user(subject.get("namespace", ""), subject["name"])
    return str(subject["name"])


def render(overlay: str) -> str:
    """`kubectl kustomize deploy/kubernetes/overlays/<overlay>`: the manifests a user applies."""
    done = subprocess.run(["kubectl", "kustomize", str(OVERLAYS / overlay)], capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {done.stderr.strip()}")
    return done.stdout


class Ledger:
    """Every (verb, group, resource[/subresource], namespace) a non-admin user asked for, allowed
    or refused (never reset: what the whole session used)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.allowed: dict[str, set[tuple[str, str, str, str]]] = {}
        self.refused: dict[str, set[tuple[str, str, str, str]]] = {}

    def record(self, user: str, a: Attributes, allowed: bool) -> None:
        with self._lock:
            (self.allowed if allowed else self.refused).setdefault(user, set()).add(a.grant)


@dataclass
class Authorizer:
    """Tokens to users, and the RBAC that decides for every user but the admin."""

    tokens: dict[str, str]
    rbac: Rbac | None = None  # None: every authenticated user may do anything (no RBAC loaded)
    ledger: Ledger = field(default_factory=Ledger)

    def user(self, authorization: str) -> str | None:
        scheme, _, token = authorization.partition(" ")
        return self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None

    def allows(self, user: str, a: Attributes) -> bool:
        if user == ADMIN:
            return True
        allowed = self.rbac is None or self.rbac.allows(user, a)
        self.ledger.record(user, a, allowed)
        return allowed
