"""What the handlers keep for a Pipeline between its timers' runs: the status as last written,
and only what the Pipeline does not have already put on kopf's patch."""

from __future__ import annotations

from typing import cast

import kopf

from sluiceway_operator.controller import Controller
from sluiceway_operator.handlers import Kept


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
