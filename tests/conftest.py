"""Markers: tests that start real processes (everything under tests/integration, and the tests
that use a redis-server or SeaweedFS fixture) are marked ``integration``; ``make test-unit``
runs the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

_INTEGRATION = Path(__file__).resolve().parent / "integration"
_PROCESS_FIXTURES = frozenset({"redis_server", "s3"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _INTEGRATION in Path(item.fspath).parents or fixtures & _PROCESS_FIXTURES:
            item.add_marker(pytest.mark.integration)
