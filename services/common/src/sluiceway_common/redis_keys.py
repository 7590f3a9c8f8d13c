"""Names of a pipeline's Redis keys."""

from __future__ import annotations


def failed_set(pipeline: str) -> str:
    """Set of keys whose fetch failed for good."""
    return f"sluiceway:{pipeline}:failed"


def failed_info(pipeline: str) -> str:
    """Hash beside the failed set: key -> JSON ``{"reason", "status", "at"}``."""
    return f"sluiceway:{pipeline}:failed:info"


# The pipeline's shared rate limit (the fetcher's limiter and ``sluiceway rate``). Times in
# them are Redis server time in seconds, so that no fetcher's clock matters.


def rate_last(pipeline: str) -> str:
    """The limiter's state (GCRA): when the last reserved request may start. It expires
    100 s after that, so an idle pipeline leaves nothing behind."""
    return f"sluiceway:{pipeline}:rate:last"


def rate_limit(pipeline: str) -> str:
    """Requests per second set by ``sluiceway rate set``; while it is absent each fetcher
    uses its own ``SLUICEWAY_RATE_LIMIT``."""
    return f"sluiceway:{pipeline}:rate:limit"


def owned(pipeline: str) -> tuple[str, ...]:
    """Every Redis key of the pipeline: what to delete along with it."""
    return (
        failed_set(pipeline), failed_info(pipeline),
        rate_last(pipeline), rate_limit(pipeline), rate_pause_until(pipeline),
    )  # fmt: skip


def rate_pause_until(pipeline: str) -> str:
    """No request starts before this time: the upstream asked for a pause (Retry-After)."""
    return f"sluiceway:{pipeline}:rate:pause_until"
