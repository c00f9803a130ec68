"""service.tasks.sessions: answers outlive sockets, per key, for a while."""

from __future__ import annotations

from protocol.errors import ErrorItem
from service.tasks.sessions import InMemorySessions
from tests.service.fakes import Socket
from tests.support import FakeClock


def error(task_uuid: str) -> ErrorItem:
    return ErrorItem(code="invalidImage", message="m", taskUUID=task_uuid)


async def test_answers_wait_while_detached_and_arrive_on_resume_in_order():
    clock = FakeClock()
    sessions = InMemorySessions(clock=clock)
    session = await sessions.resume_or_create(None, "alice")
    old, new = Socket(), Socket()
    await session.attach(old.send)
    await session.deliver(error("a"))
    old.open = False  # the socket dies: the next answer fails to go out and waits
    await session.deliver(error("b"))
    session.detach(old.send, sessions.now())
    await session.deliver(error("c"))
    resumed = await sessions.resume_or_create(session.uuid, "alice")
    await resumed.attach(new.send)
    assert [f["errors"][0]["taskUUID"] for f in old.frames] == ["a"]
    assert [f["errors"][0]["taskUUID"] for f in new.frames] == ["b", "c"]


async def test_a_full_outbox_drops_its_oldest_answer():
    sessions = InMemorySessions(max_buffered=2)
    session = await sessions.resume_or_create(None, "alice")
    for name in "abc":
        await session.deliver(error(name))
    socket = Socket()
    await session.attach(socket.send)
    assert [f["errors"][0]["taskUUID"] for f in socket.frames] == ["b", "c"]


async def test_a_detached_session_is_forgotten_after_the_linger():
    clock = FakeClock()
    sessions = InMemorySessions(linger=120, clock=clock)
    session = await sessions.resume_or_create(None, "alice")
    socket = Socket()
    await session.attach(socket.send)
    session.detach(socket.send, sessions.now())
    clock.now += 119
    assert sessions.sweep() == 0
    clock.now += 1
    assert sessions.sweep() == 1
    assert (await sessions.resume_or_create(session.uuid, "alice")) is not session


async def test_an_attached_session_is_never_swept():
    clock = FakeClock()
    sessions = InMemorySessions(linger=1, clock=clock)
    session = await sessions.resume_or_create(None, "alice")
    await session.attach(Socket().send)
    clock.now += 1000
    assert sessions.sweep() == 0
