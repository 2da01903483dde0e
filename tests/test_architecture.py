"""The package's rooms import only leftward, and no task workflow imports another (docs/design.md).

``data -> sam -> priors -> networks -> workflows``: a module may import its own room, an earlier room and the
foundation modules at the top of ``bundle/`` (errors, atomic writes, rank checks, ...), which themselves import no
room. Inside ``bundle/workflows/`` each task (``segmentation``, ``classification``, ...) may import ``common`` but
no other task, and ``common`` imports no task. ``bundle/testing`` (test instruments) comes after the product, which
never imports it; no module imports another round a circle. Read from the source with ``ast``, so nothing is
imported or run; imports inside functions, ``TYPE_CHECKING`` blocks and ``importlib.import_module("bundle...")`` /
``optional_import("bundle...")`` calls count too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"
#: the rooms in data-flow order; a room may import only itself and the rooms before it. ``weak`` is the last of the
#: product: the ``bundle.weak`` module gathers WeakMedSAM's public names from every room and nothing imports it;
#: ``testing`` (phantoms, the DICOM test writer, the shapes-trained tiny SAM) comes after the product, so no product
#: room may import it
ROOMS = ("data", "sam", "priors", "networks", "workflows", "inference", "weak", "testing")
COMMON = "common"
_IMPORT_CALLS = ("import_module", "optional_import", "__import__")


def module_name(path: Path, root: Path = BUNDLE) -> str:
    """Dotted name of a source file (``bundle/workflows/common/guards.py`` -> ``bundle.workflows.common.guards``)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> set[str]:
    """Absolute names a module's source imports: ``import a.b``, ``from a import b`` (as ``a.b``), relative imports
    resolved against ``module``, and string arguments of ``import_module`` / ``optional_import`` / ``__import__``."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            names.update(prefix if alias.name == "*" else f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in _IMPORT_CALLS and isinstance(node.args[0].value, str):
                names.add(node.args[0].value)
    return {n for n in names if n}


def _place(name: str) -> tuple[str | None, str | None]:
    """``(room, task)`` of a ``bundle.*`` name: room None for the foundation, task only inside ``workflows``."""
    parts = name.split(".")
    if len(parts) < 2 or parts[1] not in ROOMS:
        return None, None
    task = parts[2] if parts[1] == "workflows" and len(parts) > 2 else None
    return parts[1], task


def rule_breaks(module: str, imported: Iterable[str]) -> list[str]:
    """The imports of ``module`` that break the architecture, as ``"module -> name (why)"`` lines."""
    room, task = _place(module)
    breaks = []
    for name in sorted(imported):
        if name != "bundle" and not name.startswith("bundle."):
            continue
        other_room, other_task = _place(name)
        if other_room is None:
            continue  # the foundation (bundle.errors, bundle.atomic, ...) serves every room
        if room is None:
            why = f"the foundation imports no room, here {other_room!r}"
        elif ROOMS.index(other_room) > ROOMS.index(room):
            why = f"{room!r} comes before {other_room!r}: imports point only leftward"
        elif room == other_room == "workflows" and other_task not in (None, COMMON, task):
            who = "common" if task == COMMON else f"task {task!r}" if task else "the workflows package"
            why = f"{who} imports task {other_task!r}: task workflows share code only through 'common'"
        else:
            continue
        breaks.append(f"{module} -> {name} ({why})")
    return breaks


def _source_files() -> list[Path]:
    return sorted(p for p in BUNDLE.rglob("*.py") if "__pycache__" not in p.parts)


CASES = [
    ("bundle.workflows.classification.train", "from bundle.workflows.segmentation.inputs import PRIOR_MODES", 1),
    ("bundle.workflows.classification.train", "from ..segmentation import inputs", 1),
    ("bundle.workflows.classification.train", "import bundle.workflows.segmentation", 1),
    ("bundle.workflows.common.report", "from bundle.workflows.segmentation.metrics import case_metrics", 1),
    ("bundle.workflows.common.report", "from bundle.workflows import segmentation", 1),
    ("bundle.data.tasks", "import bundle.workflows.common", 1),
    ("bundle.sam.engine", "def f():\n    from bundle.workflows.common.guards import check_finite_state\n", 1),
    ("bundle.priors.cache", "from bundle.networks.cam import grad_cam", 1),
    ("bundle.priors.cache", "x = importlib.import_module('bundle.workflows.common')", 1),
    ("bundle.errors", "from bundle.data.case_ids import case_id_of", 1),
    ("bundle.workflows.classification.train", "from bundle.workflows.common import guards", 0),
    ("bundle.workflows.segmentation.report", "from ..common.case_report import CaseReport", 0),
    ("bundle.workflows.segmentation.report", "from bundle.workflows.segmentation.metrics import case_metrics", 0),
    ("bundle.workflows.common.guards", "from bundle.data.case_ids import case_id_of\nfrom bundle import errors", 0),
    ("bundle.priors.transforms", "from bundle.sam.slices import SliceWindow\nimport numpy, bundle.data", 0),
    ("bundle.priors.transforms", "from . import maps\nfrom .maps import samaug_prior_maps", 0),
]


@pytest.mark.parametrize("module, source, n_breaks", CASES)
def test_rule_checker_on_synthetic_sources(module, source, n_breaks):
    assert len(rule_breaks(module, imported_names(source, module))) == n_breaks


def test_relative_imports_resolve_against_the_module():
    assert "bundle.workflows.segmentation.inputs" in imported_names(
        "from ..segmentation import inputs", "bundle.workflows.classification.train"
    )
    assert imported_names("from .maps import x", "bundle.priors", is_package=True) == {"bundle.priors.maps.x"}
    assert imported_names("from .maps import x", "bundle.priors.transforms") == {"bundle.priors.maps.x"}


def test_no_product_room_imports_the_test_instruments():
    assert ROOMS[-1] == "testing"  # the room order then forbids every product room to import it
    assert rule_breaks("bundle.data.datalist", {"bundle.testing.phantoms.ct_phantom"})
    assert not rule_breaks("bundle.testing.phantom_writers", {"bundle.data.dicom_input.lps_from_ras"})


def test_every_package_directory_is_a_placed_room():
    unplaced = sorted(
        p.name for p in BUNDLE.iterdir() if p.is_dir() and p.name not in ROOMS and any(p.rglob("*.py"))
    )
    assert not unplaced, f"bundle/{unplaced} not placed in the data-flow order: add them to ROOMS in this test"


def test_the_package_imports_only_leftward_and_tasks_never_import_each_other():
    files = _source_files()
    assert any(module_name(p).startswith("bundle.workflows.segmentation") for p in files)
    breaks = []
    for path in files:
        module = module_name(path)
        names = imported_names(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
        breaks += rule_breaks(module, names)
    assert not breaks, "imports against the room order of docs/design.md:\n" + "\n".join(breaks)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the ``bundle`` modules it imports (a name ``bundle.a.b.f`` counts as its longest module prefix)."""
    files = _source_files()
    modules = {module_name(p): p for p in files}
    graph = {}
    for module, path in modules.items():
        names = imported_names(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
        targets = set()
        for name in names:
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != module:
                targets.add(".".join(parts))
        if path.name == "__init__.py" and "iter_modules" in path.read_text(encoding="utf-8"):
            # a package that finds its modules by listing itself (bundle.data.datasets) imports each of them
            targets |= {m for m in modules if m.rpartition(".")[0] == module}
        graph[module] = targets
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The circles of an import graph (one list of modules per strongly connected group of two or more)."""
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_on_a_toy_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_circles(graph) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_circle():
    # imports inside functions count: a late import hides a circle from Python, not from a reader
    circles = import_circles(_module_graph())
    assert not circles, "modules that import each other (directly or round a circle):\n" + "\n".join(
        " <-> ".join(c) for c in circles)
