"""The decoder never throws across its boundary: any bytes, any JSON, become tasks or errors."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.codec import TASK_TYPES, decode_frame
from protocol.errors import ErrorItem

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "taskType",
        "taskUUID",
        "inputImage",
        "inputs",
        "image",
        "settings",
        "rgba",
        "outputType",
        "outputFormat",
        "outputQuality",
        "ttl",
        "includeCost",
        "alphaMatting",
        "apiKey",
        "model",
        "alphaMattingErodeSize",
        "postProcessMask",
        "returnOnlyMask",
        "deliveryMethod",
    ]
) | st.text(max_size=8)
task_like = st.dictionaries(field_names, json_values, max_size=8)
tasks_with_type = st.builds(
    lambda t, d: {**d, "taskType": t}, st.sampled_from(sorted(TASK_TYPES)), task_like
)


def check(frame) -> None:
    decoded = decode_frame(frame)
    assert all(isinstance(e, ErrorItem) and e.code and e.message for e in decoded.errors)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes(frame):
    check(frame)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_any_json(value):
    check(json.dumps(value).encode())


@settings(max_examples=500, deadline=None)
@given(st.lists(tasks_with_type | task_like, max_size=5))
def test_arrays_of_task_like_objects_answer_every_element(tasks):
    decoded = decode_frame(json.dumps(tasks).encode())
    assert len(decoded.tasks) + len(decoded.errors) == len(tasks)
    check(json.dumps(tasks).encode())
