"""protocol.codec under hostile frames: nesting, floods of elements."""

from __future__ import annotations

import json

import pytest

from protocol.codec import decode_frame


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
