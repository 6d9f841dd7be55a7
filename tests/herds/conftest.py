"""Fixtures of the herd tests."""

from tests.herds.drill_lab import drill  # noqa: F401 - the `drill` herd fixture
