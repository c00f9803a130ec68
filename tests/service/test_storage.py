"""service.storage: images by UUID with an expiry, swept from disk."""

from __future__ import annotations

from service.storage import ImageStore
from tests.support import FakeClock as Clock


async def test_an_image_lives_for_its_ttl_then_is_gone_and_swept(tmp_path):
    clock = Clock()
    store = ImageStore(tmp_path, default_ttl=3600, clock=clock)
    stored = await store.put(b"png-bytes", "png", ttl=60)
    assert stored.path.read_bytes() == b"png-bytes"
    assert await store.read(stored.uuid) == b"png-bytes"
    clock.now += 59
    assert store.get(stored.uuid) is not None
    clock.now += 1
    assert store.get(stored.uuid) is None and await store.read(stored.uuid) is None
    assert stored.path.exists()
    assert await store.sweep() == 1
    assert not stored.path.exists()


async def test_default_ttl_applies_when_the_task_gives_none(tmp_path):
    clock = Clock()
    store = ImageStore(tmp_path, default_ttl=100, clock=clock)
    stored = await store.put(b"x", "jpg")
    clock.now += 99
    assert store.get(stored.uuid) is not None
    clock.now += 1
    assert store.get(stored.uuid) is None


async def test_files_of_an_earlier_run_are_adopted(tmp_path):
    first = ImageStore(tmp_path, default_ttl=3600)
    stored = await first.put(b"kept", "webp")
    second = ImageStore(tmp_path, default_ttl=3600)
    assert await second.read(stored.uuid) == b"kept"
    assert second.get(stored.uuid).extension == "webp"
