"""A Pipeline's children are applied when their manifest changes, not every poll: what was
applied last is remembered, forgotten on a failure or a delete, and applied again after a
while in any case (another manager's change taken back)."""

from __future__ import annotations

from typing import Any

import pytest

from sluiceway_operator.kube import Applied, Kube


class Sent(Kube):
    """Records the applies and deletes it gets; fails an apply when told."""

    def __init__(self) -> None:  # no API server behind it
        self.sent: list[tuple[str, str]] = []
        self.fail = False

    async def apply(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise OSError("connection refused")
        self.sent.append(("apply", body["metadata"]["name"]))
        return body

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.sent.append(("delete", name))
        return True


def body(name: str, replicas: int = 1) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "data"},
            "spec": {"replicas": replicas}}  # fmt: skip


async def test_an_unchanged_child_is_applied_once_until_it_changes_or_is_due_again() -> None:
    now = [0.0]
    kube = Sent()
    children = Applied(kube, lambda: now[0], reapply=300)
    assert await children.apply(body("w"))
    assert not await children.apply(body("w"))  # the same: skipped
    assert await children.apply(body("f"))  # another child
    assert await children.apply(body("w", 2))  # changed
    now[0] = 299
    assert not await children.apply(body("w", 2))
    now[0] = 600
    assert await children.apply(body("w", 2))  # due again: another manager's change undone
    assert kube.sent == [("apply", "w"), ("apply", "f"), ("apply", "w"), ("apply", "w")]


async def test_a_failed_apply_a_delete_and_forget_make_the_next_apply_go() -> None:
    kube = Sent()
    children = Applied(kube, lambda: 0.0)
    manifest = body("w")
    await children.apply(manifest)
    manifest["spec"]["replicas"] = 5  # the caller's dict changed afterwards: still compared
    assert await children.apply(body("w", 5))
    kube.fail = True
    with pytest.raises(OSError):
        await children.apply(body("w", 6))
    kube.fail = False
    assert await children.apply(body("w", 5))  # the failed one left nothing remembered
    await children.delete("Deployment", "data", "w")
    assert await children.apply(body("w", 5))
    children.forget()
    assert await children.apply(body("w", 5))
    children.forget("Deployment", "w")
    assert await children.apply(body("w", 5))
    assert not await children.apply(body("w", 5))
