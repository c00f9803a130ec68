"""The layout's promises: no model runtime where none is needed, and no import cycles."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.support import ROOT

RUNTIMES = ("onnxruntime", "onnx", "openvino")


def _loaded_after(code: str, watched: tuple[str, ...] = RUNTIMES) -> list[str]:
    """Which of ``watched`` (the model runtimes) a fresh interpreter has loaded after running
    ``code``."""
    probe = f"{code}\nimport sys; print(' '.join(m for m in {watched!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return result.stdout.split()


@pytest.mark.parametrize(
    "module",
    [
        "service.storage.directory",
        "service.storage.s3",
        "service.tasks.dispatch",
        "service.transport.http",
        "service.config",
        "service.app",  # a gateway builds its app and loads no model
    ],
)
def test_these_modules_load_no_model_runtime(module):
    assert _loaded_after(f"import {module}") == []


# The processor is where the pipeline's kernels load: it runs where images are processed.
PIPELINE_HOME = "service.tasks.processor"


@pytest.mark.parametrize("package", ["service.tasks", "service.transport", "service.cluster"])
def test_a_gateways_packages_load_no_numba(package):
    """The gateway's roles (tasks, transport, cluster) never need the pipeline's kernels: numba,
    the LLVM it brings, and Pillow load only with the processor."""
    names = sorted(
        name
        for name in grimp.build_graph("service").modules
        if (name == package or name.startswith(package + ".")) and name != PIPELINE_HOME
    )
    assert len(names) > 3
    assert _loaded_after("; ".join(f"import {name}" for name in names), ("numba", "PIL")) == []


def test_the_help_text_loads_no_model_runtime():
    code = (
        "import contextlib, io\nfrom service.__main__ import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])"
    )
    assert _loaded_after(code) == []


def test_the_probe_sees_a_runtime_when_one_is_loaded():
    assert _loaded_after("import service.inference.runtime") != []


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), TYPE_CHECKING imports
    included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in graph.modules:
                continue
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycles():
    graph = grimp.build_graph("service", "protocol", "load")
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n"
    )
    (package / "b.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles(grimp.build_graph("cyclic")) == [["cyclic.a", "cyclic.b"]]


_DOTTED = re.compile(r"(?<![\w.])service(?:\.\w+)+")


def _dangling(text: str) -> list[str]:
    """The ``service.x.y`` names in ``text`` that name no module of the tree (nor a name defined
    in the module they lead to)."""
    dangling = []
    for name in sorted(set(_DOTTED.findall(text))):
        parts = name.split(".")
        depth = len(parts)
        while depth > 1 and not (
            (ROOT / Path(*parts[:depth])).with_suffix(".py").is_file()
            or (ROOT / Path(*parts[:depth]) / "__init__.py").is_file()
        ):
            depth -= 1
        if depth == 1:
            dangling.append(name)
            continue
        rest = parts[depth:]
        if rest:
            module = (ROOT / Path(*parts[:depth])).with_suffix(".py")
            source = module.read_text() if module.is_file() else ""
            if not re.search(rf"\b{re.escape(rest[0])}\b", source):
                dangling.append(name)
    return dangling


def test_no_comment_or_doc_names_a_module_that_does_not_exist():
    files = [*ROOT.glob("service/**/*.py"), *ROOT.glob("load/**/*.py"), *ROOT.glob("docs/**/*.md")]
    found = {str(f.relative_to(ROOT)): _dangling(f.read_text()) for f in files}
    assert {f: names for f, names in found.items() if names} == {}


def test_a_name_of_a_removed_module_is_found():
    assert _dangling("see service.relay and service.cluster.relay.Relay") == ["service.relay"]
