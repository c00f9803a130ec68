"""service.storage.directory: images by UUID with an expiry, swept from disk."""

from __future__ import annotations

import os
import time
import uuid

from service.imaging.formats import CONTENT_TYPES, STORED_EXTENSIONS
from service.storage.directory import SWEEP_DUTY, DirectoryImageStore
from service.storage.store import belongs_to, new_image_uuid
from tests.support import FakeClock as Clock
from tests.support import MovingClock, memory_growth


async def test_an_image_lives_for_its_ttl_then_is_gone_and_swept(tmp_path):
    clock = Clock()
    store = DirectoryImageStore(tmp_path, default_ttl=3600, clock=clock)
    stored = await store.put(b"png-bytes", "png", ttl=60)
    assert stored.path.read_bytes() == b"png-bytes"
    assert (await store.load(stored.uuid))[1] == b"png-bytes"
    clock.now += 59
    assert store.get(stored.uuid) == stored
    clock.now += 1
    assert store.get(stored.uuid) is None and await store.load(stored.uuid) is None
    assert stored.path.exists()
    assert await store.sweep() == 1
    assert not stored.path.exists()


async def test_default_ttl_applies_when_the_task_gives_none(tmp_path):
    clock = Clock()
    store = DirectoryImageStore(tmp_path, default_ttl=100, clock=clock)
    stored = await store.put(b"x", "jpg")
    clock.now += 99
    assert store.get(stored.uuid) == stored
    clock.now += 1
    assert store.get(stored.uuid) is None


async def test_processes_sharing_the_directory_see_each_others_images(tmp_path):
    """Gateways and workers share one directory; an earlier run's files are found the same way."""
    clock = Clock()
    writer = DirectoryImageStore(tmp_path, default_ttl=3600, clock=clock)
    reader = DirectoryImageStore(tmp_path, default_ttl=3600, clock=clock)
    stored = await writer.put(b"kept", "webp", ttl=120)
    assert (await reader.load(stored.uuid))[1] == b"kept"
    assert reader.get(stored.uuid).extension == "webp"
    assert reader.get("../../etc/passwd") is None and reader.get(stored.uuid.upper()) is None
    clock.now += 120
    assert reader.get(stored.uuid) is None
    assert await reader.sweep() == 1  # the reader sweeps what the writer wrote
    assert not stored.path.exists() and await writer.load(stored.uuid) is None


def test_every_format_the_pipeline_stores_is_found_on_disk():
    assert set(STORED_EXTENSIONS) == set(CONTENT_TYPES)


async def test_a_partial_file_left_by_a_failed_write_is_swept_later(tmp_path):
    """A write that died between writing and renaming leaves ``.partial``; only its age, not
    its mtime (the image's expiry, perhaps far away), decides when it goes."""
    clock = Clock(time.time())
    store = DirectoryImageStore(tmp_path, default_ttl=60, clock=clock)
    partial = tmp_path / "9ad4918a-e9d0-440a-ac59-057a966cd421.png.partial"
    partial.write_bytes(b"half an image")
    os.utime(partial, (2**40, 2**40))
    assert await store.sweep() == 0 and partial.exists()  # perhaps still being written
    clock.now += 2 * 3600
    assert await store.sweep() == 0 and not partial.exists()


def test_an_image_uuid_tells_which_scope_stored_it():
    alice, bob = b"a" * 32, b"b" * 32
    names = {new_image_uuid(alice) for _ in range(1000)}
    assert len(names) == 1000
    for name in names:
        parsed = uuid.UUID(name)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == name
        assert belongs_to(name, alice) and belongs_to(name.upper(), alice)
        assert not belongs_to(name, bob)
    assert not belongs_to(str(uuid.uuid4()), alice) and not belongs_to("not-a-uuid", alice)


async def test_memory_stays_bounded_however_many_images_are_stored(tmp_path):
    """Images live a day by default: a busy server stores millions in that time. The store
    keeps the records of the latest only; an older image is read from disk all the same."""
    store = DirectoryImageStore(tmp_path, default_ttl=86_400, recent=100)
    first = await store.put(b"first", "png")
    grown = await memory_growth(lambda: store.put(b"x", "png"), 200, 1000, "*/service/storage/*")
    assert grown < 20_000  # records kept for all 1000 would hold about 660 KB
    loaded = await store.load(first.uuid)
    assert loaded is not None and loaded[1] == b"first"


async def test_a_costly_sweep_waits_a_hundred_times_its_duration_before_the_next(tmp_path):
    """Each sweep stats every file: with millions stored it takes seconds, and the app asks for
    one every 30 s. An expired image is unreadable at once; only its file waits."""
    clock = MovingClock(step=0.0)
    store = DirectoryImageStore(tmp_path, default_ttl=3600, clock=clock)
    early = await store.put(b"early", "png", ttl=10)
    clock.now += 10
    clock.step = 1.0  # 1 s between the sweep's start and end
    assert await store.sweep() == 1
    clock.step = 0.0
    late = await store.put(b"late", "png", ttl=10)
    clock.now += 30
    assert store.get(late.uuid) is None and late.path.exists()  # not swept 30 s later
    assert await store.sweep() == 0 and late.path.exists()
    clock.now += SWEEP_DUTY * 1.0 - 30
    assert await store.sweep() == 1 and not late.path.exists() and not early.path.exists()
