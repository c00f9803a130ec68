"""docs/configuration.md against the parser of ``python -m service``: one description of each
setting, checked so that the page and the flags cannot drift apart."""

from __future__ import annotations

import re

from service.__main__ import ENV_PREFIX, build_parser
from service.config import Config
from tests.support import ROOT

PAGE = ROOT / "docs" / "configuration.md"


def _rows() -> dict[str, tuple[str, str]]:
    """Each flag the page's table names, with its row's variable and default cells."""
    rows: dict[str, tuple[str, str]] = {}
    for line in PAGE.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`--"):
            continue
        for flag in re.findall(r"`(--[a-z0-9-]+)", cells[0]):
            rows[flag] = (cells[1], cells[2])
    return rows


def _flags() -> dict[str, str]:
    """Each long flag of the parser, with its destination (the Config field)."""
    return {
        option: action.dest
        for action in build_parser()._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_flag_has_a_row_and_every_row_a_flag():
    flags, rows = _flags(), _rows()
    assert sorted(set(flags) - set(rows)) == [], "flags missing from docs/configuration.md"
    assert sorted(set(rows) - set(flags)) == [], "rows naming no flag of python -m service"


def test_each_row_names_the_flags_environment_variable():
    for flag, (variable, _) in _rows().items():
        expected = ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()
        assert expected in variable, f"{flag}: {variable} should name {expected}"


def test_a_plain_default_on_the_page_is_the_configs():
    """Defaults written as a number or a word (not prose such as "half the machine's memory")
    equal Config's."""
    defaults, flags = Config(), _flags()
    for flag, (_, shown) in _rows().items():
        value = getattr(defaults, flags[flag], None)
        text = shown.strip("`").replace(",", "")
        if value is None or isinstance(value, bool | tuple | list) or " " in text:
            continue
        if isinstance(value, int | float):
            try:
                assert float(text) == float(value), f"{flag}: the page says {shown}, Config {value}"
            except ValueError:
                continue
        else:
            assert text == str(value), f"{flag}: the page says {shown}, Config {value}"
