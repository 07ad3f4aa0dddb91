"""The sandbox cluster's nodes, as the kubelet and the node lifecycle controller report them.

A node is Ready, or NotReady (its kubelet stopped reporting: the controller sets the Ready
condition to Unknown and taints the node `node.kubernetes.io/unreachable`), or under memory or
disk pressure (the kubelet sets the condition and the node is tainted
`node.kubernetes.io/memory-pressure` / `disk-pressure`). The scheduler places no new pod on a
node with a NoSchedule taint; pods already on an unreachable node are marked not Ready
(condition Ready=False) but keep their last reported container state, as the API shows them
until they are evicted.
"""

from __future__ import annotations

from typing import Any

from sandbox.k8s_objects import now_iso

NODE_NAMES = ("sandbox-node-1", "sandbox-node-2")
# what POST /_sandbox/node accepts, and what each sets
STATES = ("Ready", "NotReady", "MemoryPressure", "DiskPressure")
_TAINTS = {
    "NotReady": [{"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
                 {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}],
    "MemoryPressure": [{"key": "node.kubernetes.io/memory-pressure", "effect": "NoSchedule"}],
    "DiskPressure": [{"key": "node.kubernetes.io/disk-pressure", "effect": "NoSchedule"}],
}


# (reason, message) the kubelet writes for each pressure condition: [False, True]
_PRESSURE = {
    "MemoryPressure": (("KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                       ("KubeletHasInsufficientMemory", "kubelet has insufficient memory available")),
    "DiskPressure": (("KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                     ("KubeletHasDiskPressure", "kubelet has disk pressure")),
    "PIDPressure": (("KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                    ("KubeletHasInsufficientPID", "kubelet has insufficient PID available")),
}


def _condition(type_: str, status: str, reason: str, message: str, stamp: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}


def node_object(name: str, index: int, state: str = "Ready") -> dict[str, Any]:
    """A node as the API returns it, in one of STATES."""
    stamp = now_iso()
    unreachable = state == "NotReady"
    ready = (_condition("Ready", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", stamp)
             if unreachable else _condition("Ready", "True", "KubeletReady", "kubelet is posting ready status", stamp))

    def pressure(kind: str) -> dict[str, str]:
        if unreachable:
            return _condition(kind, "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", stamp)
        reason, message = _PRESSURE[kind][state == kind]
        return _condition(kind, "True" if state == kind else "False", reason, message, stamp)

    taints = [{**t, "timeAdded": stamp} if t["effect"] == "NoExecute" else t for t in _TAINTS.get(state, [])]
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {"podCIDR": f"10.244.{index}.0/24", **({"taints": taints} if taints else {})},
        "status": {
            "conditions": [pressure("MemoryPressure"), pressure("DiskPressure"), pressure("PIDPressure"), ready],
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "3800m", "memory": "15Gi", "pods": "110"},
            "addresses": [{"type": "InternalIP", "address": f"10.0.0.{index + 1}"},
                          {"type": "Hostname", "address": name}],
            "nodeInfo": {"machineID": f"{index + 1:032x}", "systemUUID": f"00000000-0000-0000-0000-{index + 1:012x}",
                         "bootID": f"b0070000-0000-0000-0000-{index + 1:012x}", "kernelVersion": "6.1.0-28-amd64",
                         "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                         "kubeletVersion": "v1.32.0", "kubeProxyVersion": "v1.32.0", "operatingSystem": "linux",
                         "architecture": "amd64"},
        },
    }


def reachable(node: dict[str, Any] | None) -> bool:
    """The node's kubelet reports (Ready is not Unknown/False): its pods can serve."""
    if node is None:
        return False
    ready = next((c for c in node["status"]["conditions"] if c["type"] == "Ready"), None)
    return ready is not None and ready["status"] == "True"


def schedulable(node: dict[str, Any]) -> bool:
    """The scheduler may place a new pod on it (no NoSchedule taint)."""
    return not any(t.get("effect") == "NoSchedule" for t in node.get("spec", {}).get("taints") or [])
