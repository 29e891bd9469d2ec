"""Fixtures of the tenant tests: the tiny model (shared with the server tests)."""

from tests.integration.server.conftest import tiny_model  # noqa: F401  (fixture re-exported)
