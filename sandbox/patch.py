"""The three patch flavours the Kubernetes API accepts, as far as kubectl and the client use them."""

from __future__ import annotations

import copy
from typing import Any

# Lists merged element-by-element on this key in a strategic merge patch (the Kubernetes
# types this sandbox serves use "name" for containers, env, ports, volumes, volumeMounts).
_MERGE_KEY = "name"


class PatchError(ValueError):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Strategic merge patch: a merge patch whose lists of named objects merge by name."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $setElementOrder/..., $retainKeys: ordering hints we do not need
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and _is_named_list(value) and isinstance(result.get(key), list):
            result[key] = _merge_named_lists(result[key], value)
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _is_named_list(items: list) -> bool:
    return bool(items) and all(isinstance(i, dict) and _MERGE_KEY in i for i in items)


def _merge_named_lists(current: list, patch: list) -> list:
    merged = [copy.deepcopy(i) for i in current]
    for item in patch:
        name = item[_MERGE_KEY]
        index = next((n for n, c in enumerate(merged) if isinstance(c, dict) and c.get(_MERGE_KEY) == name), None)
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append(strategic_merge_patch({}, item))
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged


def json_patch(target: Any, operations: list) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test)."""
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation: {op!r}")
        parent, last = _resolve(doc, op["path"])
        kind = op["op"]
        if kind in ("add", "replace"):
            value = copy.deepcopy(op.get("value"))
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if kind == "add":
                    parent.insert(index, value)
                else:
                    parent[index] = value
            else:
                if kind == "replace" and last not in parent:
                    raise PatchError(f"replace: {op['path']} does not exist")
                parent[last] = value
        elif kind == "remove":
            if isinstance(parent, list):
                parent.pop(int(last))
            elif last in parent:
                del parent[last]
            else:
                raise PatchError(f"remove: {op['path']} does not exist")
        elif kind == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != op.get("value"):
                raise PatchError(f"test failed at {op['path']}")
        else:
            raise PatchError(f"unsupported JSON patch op {kind!r}")
    return doc


def _resolve(doc: Any, pointer: str) -> tuple[Any, str]:
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}")
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/")]
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError) as exc:
            raise PatchError(f"path {pointer} does not exist") from exc
    return node, parts[-1]


def apply_patch(target: dict, body: Any, content_type: str) -> dict:
    content_type = content_type.split(";")[0].strip()
    if content_type == "application/json-patch+json":
        if not isinstance(body, list):
            raise PatchError("a JSON patch must be a list of operations")
        return json_patch(target, body)
    if not isinstance(body, dict):
        raise PatchError("a merge patch must be a JSON object")
    if content_type == "application/merge-patch+json":
        return merge_patch(target, body)
    if content_type == "application/strategic-merge-patch+json":
        return strategic_merge_patch(target, body)
    raise PatchError(f"unsupported patch type {content_type!r}")
