"""The fault suite runs the real processes, like the end-to-end tests, with their fixtures."""

from tests.e2e.conftest import processes

__all__ = ["processes"]
