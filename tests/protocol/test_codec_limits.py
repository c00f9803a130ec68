"""protocol.codec under hostile frames: nesting, floods of elements, UUID spellings, ttl."""

from __future__ import annotations

import json

import pytest

from protocol.codec import decode_frame
from protocol.messages import MAX_TTL

U1 = "9ad4918a-e9d0-440a-ac59-057a966cd421"


@pytest.mark.parametrize(
    "frame",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"taskType":"ping","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}]",
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
def test_deep_nesting_is_invalid_json_not_an_exception(frame):
    decoded = decode_frame(frame)
    assert decoded.tasks == [] and [e.code for e in decoded.errors] == ["invalidJSON"]
    assert "nest" in decoded.errors[0].message


def test_one_error_covers_the_elements_past_the_limit():
    frame = json.dumps([{}] * 10 + [{"taskType": "ping"}] * 5).encode()
    decoded = decode_frame(frame, max_elements=4)
    assert [e.code for e in decoded.errors] == ["missingTaskType"] * 4 + ["tooManyTasks"]
    assert decoded.errors[-1].max == 4 and "11" in decoded.errors[-1].message
    assert decoded.tasks == []


def test_a_frame_within_the_limit_is_read_whole():
    decoded = decode_frame(json.dumps([{"taskType": "ping"}] * 4).encode(), max_elements=4)
    assert len(decoded.tasks) == 4 and decoded.errors == []


@pytest.mark.parametrize("spelling", [U1 + "\n", U1.upper() + " ", " " + U1, U1[:-1] + "g"])
def test_a_task_uuid_is_matched_whole(spelling):
    decoded = decode_frame(json.dumps([{"taskType": "getResponse", "taskUUID": spelling}]).encode())
    assert [e.code for e in decoded.errors] == ["invalidTaskUUID"]


def test_a_task_uuid_in_capitals_is_accepted_and_kept_as_sent():
    decoded = decode_frame(
        json.dumps([{"taskType": "getResponse", "taskUUID": U1.upper()}]).encode()
    )
    [task] = decoded.tasks
    assert task.task_uuid == U1.upper()  # echoed as sent: the SDKs match answers by the string


def test_ttl_is_bounded():
    def removal(ttl: int) -> bytes:
        return json.dumps(
            [{"taskType": "removeBackground", "taskUUID": U1, "inputImage": "x", "ttl": ttl}]
        ).encode()

    assert decode_frame(removal(MAX_TTL)).tasks[0].output.ttl == MAX_TTL
    for ttl in (MAX_TTL + 1, 2**62, 10**30):
        [error] = decode_frame(removal(ttl)).errors
        assert error.code == "invalidTtl" and error.max == MAX_TTL and error.taskUUID == U1
