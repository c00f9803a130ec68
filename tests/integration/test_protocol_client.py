"""service.protocol_client against the real server: authentication, refusal, answers matched
by taskUUID, pings, and resuming a session."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorItem
from protocol.messages import AnswerItem
from service.net.loopback import free_port
from service.protocol_client import ProtocolClient, Refused, Unreachable
from tests.support import b64, fixture_bytes, removal_task


async def test_answers_are_matched_by_task_uuid_and_errors_are_typed(server):
    async with await ProtocolClient.connect(server.ws_url, "any-key") as client:
        assert len(client.session_uuid) == 36 and await client.ping()
        good, bad = removal_task(b64(fixture_bytes("car-1.jpg"))), removal_task("bm90IGFuIGltYWdl")
        await client.send([good, bad])
        found, others = await client.answers([good["taskUUID"], bad["taskUUID"]], timeout=60)
    result, error = found[good["taskUUID"]], found[bad["taskUUID"]]
    assert isinstance(result, AnswerItem) and result.imageBase64Data
    assert isinstance(error, ErrorItem) and error.code == "invalidImage"
    assert others == []


async def test_a_webhook_tasks_receipt_is_not_its_answer(server):
    """An async task is acknowledged at once; its answer comes through getResponse."""
    async with await ProtocolClient.connect(server.ws_url, "any-key") as client:
        task = removal_task(b64(fixture_bytes("car-1.jpg")), deliveryMethod="async")
        await client.send([task])
        frame = await client.frame(timeout=30)
    assert [item.taskUUID for item in frame.data] == [task["taskUUID"]]
    assert frame.data[0].imageUUID is None  # a receipt, which answers() would not count


async def test_a_wrong_key_is_refused_with_the_services_error(keyed_server):
    with pytest.raises(Refused) as refused:
        await ProtocolClient.connect(keyed_server.ws_url, "wrong-key")
    assert refused.value.error.code == "invalidApiKey"


async def test_nothing_listening_is_unreachable():
    with pytest.raises(Unreachable, match="cannot reach the service"):
        await ProtocolClient.connect(f"ws://127.0.0.1:{free_port()}", "key", timeout=5)


async def test_a_session_is_resumed_by_its_uuid(server):
    first = await ProtocolClient.connect(server.ws_url, "resume-key")
    await first.close()
    async with await ProtocolClient.connect(
        server.ws_url, "resume-key", session_uuid=first.session_uuid
    ) as again:
        assert again.session_uuid == first.session_uuid
