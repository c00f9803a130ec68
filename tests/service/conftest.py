"""A real redis-server for the unit modules that test the Redis twins: one per module, started
only when a test asks for it (the fixture's name marks the test ``integration``)."""

from __future__ import annotations

import pytest

from tests.support import start_redis


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    process = start_redis(tmp_path_factory.mktemp("redis"))
    yield process
    process.stop()
