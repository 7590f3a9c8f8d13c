"""The end-to-end tests' ``processes`` (the repository's own ``sluiceway``), for the sample
API the fetcher's image fetches from."""

from tests.e2e.conftest import processes  # noqa: F401 -- a fixture, found here by pytest
