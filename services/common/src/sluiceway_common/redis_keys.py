"""Names of a pipeline's Redis keys."""

from __future__ import annotations


def failed_set(pipeline: str) -> str:
    """Set of keys whose fetch failed for good."""
    return f"sluiceway:{pipeline}:failed"


def failed_info(pipeline: str) -> str:
    """Hash beside the failed set: key -> JSON ``{"reason", "status", "at"}``."""
    return f"sluiceway:{pipeline}:failed:info"
