"""What an API server would prune from an object before storing it: the structural schema's
pruning, as ``apiextensions.k8s.io/v1`` does it.

An object schema keeps only its ``properties`` (each pruned in turn), unless it says
``x-kubernetes-preserve-unknown-fields: true``, which keeps the others as they are; one with
``additionalProperties`` keeps every key, each pruned by that schema; an array prunes each item
by ``items``. A ``null`` is a merge patch's deletion, kept.
"""

from __future__ import annotations

from typing import Any

PRESERVE = "x-kubernetes-preserve-unknown-fields"


def pruned(schema: dict[str, Any], value: Any, *, preserve: bool = True,
           path: str = "") -> list[str]:  # fmt: skip
    """The paths in ``value`` that ``schema`` would prune. ``preserve=False``: also those it
    keeps only for ``x-kubernetes-preserve-unknown-fields`` (every field declared)."""
    if value is None:
        return []
    if isinstance(value, list):
        items = schema.get("items") or {}
        return [p for i, item in enumerate(value)
                for p in pruned(items, item, preserve=preserve, path=f"{path}[{i}]")]  # fmt: skip
    if not isinstance(value, dict) or schema.get("type") != "object":
        return []
    properties = schema.get("properties") or {}
    extra = schema.get("additionalProperties")
    found = []
    for key, child in value.items():
        where = f"{path}.{key}"
        if child is None:
            continue
        if key in properties:
            found += pruned(properties[key], child, preserve=preserve, path=where)
        elif isinstance(extra, dict):
            found += pruned(extra, child, preserve=preserve, path=where)
        elif not (preserve and schema.get(PRESERVE)) and extra is not True:
            found.append(where)
    return found
