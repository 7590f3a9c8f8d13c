"""What the handlers keep for a Pipeline between its timers' runs: the status as last written,
and only what the Pipeline does not have already put on kopf's patch; its clients closed
only once its timers' cancelled runs are done with them."""

from __future__ import annotations

import asyncio
from typing import cast

import kopf

from sluiceway_operator.controller import Controller
from sluiceway_operator.handlers import Kept
from tests.unit.operator.test_poll import stopped_mid_run


def test_only_changed_fields_go_on_kopfs_patch_and_the_last_written_wins() -> None:
    body = kopf.Body({"status": {"phase": "Migrating", "queueDepth": 3}})
    kept = Kept(cast(Controller, None))
    patch = kopf.Patch()
    assert kept.write(patch, body, {"phase": "Running", "queueDepth": 3})
    assert patch == {"status": {"phase": "Running"}}
    # Not seen through the watch yet: the memory says Running, the body still Migrating.
    assert kept.status(body) == {"phase": "Running", "queueDepth": 3}
    again = kopf.Patch()
    assert not kept.write(again, body, {"phase": "Running"})
    assert again == {"status": {"phase": "Running"}}  # written again until seen
    seen = kopf.Body({"status": {"phase": "Running", "queueDepth": 3}})
    quiet = kopf.Patch()
    assert not kept.write(quiet, seen, {"phase": "Running", "queueDepth": 3})
    assert not quiet


def test_a_field_written_replaces_the_one_before_keys_it_lacks_nulled() -> None:
    # A failed migration, retried to success: the merge patch must drop what success lacks.
    failed = {"image": "w:1", "job": "users-migrate-1", "attempts": 1, "state": "Failed",
              "reason": "BackoffLimitExceeded",
              "nextAttemptTime": "2026-01-01T00:00:30Z"}  # fmt: skip
    body = kopf.Body({"status": {"migration": failed, "writerImage": "w:0"}})
    kept = Kept(cast(Controller, None))
    running = {"image": "w:1", "job": "users-migrate-1", "attempts": 2, "state": "Running"}
    patch = kopf.Patch()
    kept.write(patch, body, {"migration": running})
    assert patch["status"]["migration"] == {**running, "reason": None, "nextAttemptTime": None}
    # Not seen yet: the body still says Failed; success is written as a whole again.
    done = {**running, "state": "Succeeded"}
    again = kopf.Patch()
    kept.write(again, body, {"migration": done, "writerImage": "w:1"})
    assert again["status"]["migration"] == {**done, "reason": None, "nextAttemptTime": None}
    assert kept.status(body)["migration"] == done
    seen = kopf.Body({"status": {"migration": done, "writerImage": "w:1"}})
    quiet = kopf.Patch()
    assert not kept.write(quiet, seen, {"migration": done, "writerImage": "w:1"})
    assert not quiet


async def test_the_clients_are_closed_only_once_the_cancelled_runs_have_unwound() -> None:
    said: list[str] = []

    class Closing:
        async def close(self) -> None:
            said.append("closed")

    kept = Kept(cast(Controller, Closing()))

    async def tick() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            await asyncio.sleep(0.1)  # a client call on the way out
            said.append("unwound")

    await stopped_mid_run(kept.reconcile, tick())
    await kept.close()
    assert said == ["unwound", "closed"]
