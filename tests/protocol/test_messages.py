"""protocol.messages' helpers."""

from __future__ import annotations

import pytest

from protocol.messages import parse_rgba


def test_a_colour_is_rgb_made_opaque_or_rgba():
    assert parse_rgba("0,0,255") == [0, 0, 255, 255]
    assert parse_rgba("1,2,3,4") == [1, 2, 3, 4]
    assert parse_rgba(" 255, +0 ,007") == [255, 0, 7, 255]


@pytest.mark.parametrize(
    "text",
    ["1,2", "1,2,3,4,5", "0,0,256", "-1,0,0", "a,b,c", "", "1_0,0,0", "\u0661,0,0", "1,2,3\n"],
)
def test_anything_else_says_what_is_expected(text):
    with pytest.raises(ValueError, match=r"R,G,B or R,G,B,A with values 0-255"):
        parse_rgba(text)
