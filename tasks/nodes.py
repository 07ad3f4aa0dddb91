"""The checklist's node item: the conditions of the nodes the service's pods run on. A node that
stopped reporting (NotReady) takes its pods out of service until they are evicted (5 minutes
by default) and replaced; memory or disk pressure keeps new pods off it. Neither is fixed by a
rollback, and a runbook that cannot see the node can only guess."""

from __future__ import annotations

from collections import Counter

from incidents.check_facts import NODES, NodeFacts, NodeState
from incidents.findings import Finding, unavailable
from integrations.errors import IntegrationError
from integrations.kubernetes import NodeSummary, PodSummary
from tasks.context import RunContext, SecretNotFound
from tasks.steps import step


def _state(node: NodeSummary | None, name: str, pods: int) -> NodeState:
    if node is None:  # listed a moment ago, gone now (or the pod names a node the list missed)
        return NodeState(name=name, pods=pods, error="not among the cluster's nodes")
    return NodeState(name=name, ready=node.ready, pressures=list(node.pressures), unschedulable=node.unschedulable,
                     pods=pods)


def _line(node: NodeState) -> str:
    if node.error:
        return f"node {node.name} ({node.pods} pods): {node.error}"
    said = "Ready" if node.ready == "True" else f"NOT Ready (Ready={node.ready})"
    extra = (f", {', '.join(node.pressures)}" if node.pressures else "") + (
        ", takes no new pods" if node.unschedulable else "")
    return f"node {node.name}: {said}{extra}; {node.pods} of the service's pods run on it"


def node_facts(nodes: list[NodeSummary], pods: list[PodSummary]) -> NodeFacts:
    """The nodes the pods run on, and whether any node of the cluster could take a new pod."""
    by_name = {n.name: n for n in nodes}
    per_node = Counter(p.node for p in pods if p.node)
    return NodeFacts(nodes=[_state(by_name.get(name), name, count) for name, count in sorted(per_node.items())],
                     unscheduled=sum(1 for p in pods if not p.node),
                     schedulable=any(n.ready == "True" and not n.unschedulable for n in nodes))


def summarize(facts: NodeFacts) -> tuple[bool | None, str]:
    """(ok, summary): ok is False when a node is not Ready or under pressure, or pods wait for one."""
    bad = [n for n in facts.nodes if not n.error and (n.ready != "True" or n.pressures)]
    unread = [n for n in facts.nodes if n.error]
    parts = [f"{n.name} {'NotReady' if n.ready != 'True' else ', '.join(n.pressures)} ({n.pods} pods)" for n in bad]
    if facts.unscheduled:
        parts.append(f"{facts.unscheduled} pods wait for a node (Pending, unschedulable)")
    if parts and facts.schedulable is False:
        parts.append("no node of the cluster takes new pods")
    if parts:
        return False, "; ".join(parts)
    if unread:
        return None, "; ".join(_line(n) for n in unread)
    if not facts.nodes:
        return True, "no pod runs on a node" + ("" if facts.schedulable else "; no node of the cluster takes new pods")
    return True, f"the {len(facts.nodes)} nodes the pods run on are Ready, without pressure"


@step("node-conditions")
def node_conditions(ctx: RunContext) -> Finding:
    """The nodes the service's pods run on: Ready or not, memory/disk/PID pressure, schedulable."""
    target = ctx.service.kubernetes
    try:
        with ctx.kubernetes() as kube:
            facts = node_facts(kube.nodes(), kube.pods(target.namespace, target.deployment))
    except (IntegrationError, SecretNotFound) as exc:
        return unavailable(NODES, exc)
    ok, summary = summarize(facts)
    return Finding(NODES, ok, summary, tuple(_line(n) for n in facts.nodes), facts)
