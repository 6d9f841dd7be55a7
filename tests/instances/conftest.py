"""Fixtures of the instance tests."""

from tests.herds.drill_lab import drill  # noqa: F401 - the `drill` herd fixture (test_outbox)
