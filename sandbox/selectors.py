"""Kubernetes label and field selectors, as list and watch requests use them."""

from __future__ import annotations

from typing import Any, Iterable


def matches_labels(labels: dict, selector: str | None) -> bool:
    """Kubernetes label selector syntax: a=b, a==b, a!=b, a in (x,y), a notin (x), a, !a."""
    if not selector:
        return True
    for term in _split_selector(selector):
        term = term.strip()
        if not term:
            continue
        if " notin " in term or " in " in term:
            key, _, values = term.partition(" notin " if " notin " in term else " in ")
            options = {v.strip() for v in values.strip().strip("()").split(",")}
            present = labels.get(key.strip()) in options
            if present == (" notin " in term):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _split_selector(selector: str) -> Iterable[str]:
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            yield selector[start:i]
            start = i + 1
    yield selector[start:]


def matches_fields(obj: dict, selector: str | None) -> bool:
    if not selector:
        return True
    for term in selector.split(","):
        negate = "!=" in term
        key, value = term.split("!=" if negate else "=", 1)
        node: Any = obj
        for part in key.replace("==", "").strip().split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if (str(node) if node is not None else "") == value.lstrip("=").strip():
            if negate:
                return False
        elif not negate:
            return False
    return True


def selector_string(match_labels: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))
