"""The layering of ``transcoders``, ``graphs`` and ``circuits``: no import cycles, no import upward.

Every module of the three packages is parsed (never imported) and every import in it counts,
at any depth (inside functions too), except those under ``if TYPE_CHECKING:``, which never run.
``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``
(the package's ``__init__``). A package's ``__init__`` may import its own submodules (that is
how it re-exports them); it is only a cycle if one of them imports the ``__init__`` back.

Three rules:

1. no import cycles between modules (each strongly connected component is reported once);
2. ``transcoders`` and ``graphs`` never import ``circuits``;
3. no module imports a higher layer than its own (``LAYERS``, bottom up).

Violations that another change is removing are listed in ``KNOWN_VIOLATIONS``; the test fails
when one of them no longer occurs, so the list can only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("transcoders", "graphs", "circuits")

# The layers, bottom up. A module belongs to the most specific entry naming it or a package above
# it; "pkg.__init__" names only that package's own __init__. A module may import its own layer
# and any layer below; every module must be placed (a new module gets a line here).
LAYERS: tuple[tuple[str, ...], ...] = (
    # transcoders: plumbing; the transcoder itself; harvesting and text; the file formats; saving and
    # loading a set (and the hub); training; which set to load; the package.
    ("transcoders.writes", "transcoders.cache", "transcoders.precision", "transcoders.distributed",
     "transcoders.positions", "transcoders.allocator"),
    ("transcoders.activations", "transcoders.model", "transcoders.sparse", "transcoders.checkpoint"),
    ("transcoders.warm_start",),
    ("transcoders.harvest", "transcoders.buffer", "transcoders.corpus"),
    ("transcoders.formats",),
    ("transcoders.hub", "transcoders.io"),
    ("transcoders.train",),
    ("transcoders.sets",),
    ("transcoders.__init__", "transcoders.__main__"),
    # graphs: the node table's schema; what works on any graph; conversions and pictures; the graph
    # type, whose methods delegate downward (see graphs/graph.py); the public functions.
    ("graphs.nodes",),
    ("graphs.metrics", "graphs.effects", "graphs.node_labels", "graphs.paths", "graphs.graphml", "graphs.heads"),
    ("graphs.convert", "graphs.viewer", "graphs.draw", "graphs.summary", "graphs.html_data", "graphs.html"),
    ("graphs.graph",),
    ("graphs.files", "graphs.__init__", "graphs.html_server"),
    # circuits: the hook toolkit (every engine's, the models' recording included); models and tasks;
    # the replacement model (ablations, transcoders in place of the MLPs, feature labels); attribution
    # graphs; patching; circuit discovery, interventions, probes, known circuits; the command lines
    # and the package.
    ("circuits.hooks",),
    ("circuits.models", "circuits.tasks"),
    ("circuits.ablation", "circuits.replacement", "circuits.labels"),
    ("circuits.attribution",),
    ("circuits.patching",),
    ("circuits.discovery", "circuits.intervention", "circuits.probes", "circuits.known"),
    ("circuits.testing", "circuits.cli", "circuits.transcoders_cli", "circuits.__main__", "circuits.__init__"),
)

# Packages that must never import another, whatever the layers say.
FORBIDDEN: dict[str, tuple[str, ...]] = {"transcoders": ("circuits",), "graphs": ("circuits",)}

# Violations left in the code on purpose, each with its reason and the work that removes it, as
# "cycle: a <-> b", "upward: a -> b" or "forbidden: a -> b" (what the failure message prints). Only
# circuits may have any; transcoders and graphs must be clean. When one no longer occurs the test
# says so: delete its line, so the list can only shrink. Empty now: the last ones,
#   "cycle: circuits.attribution.tracing <-> circuits.attribution.verify" and
#   "upward: circuits.attribution.verify -> circuits.patching.features",
# were being restructured under issue #15 and went with circuits.replacement (17e16e1).
KNOWN_VIOLATIONS: frozenset[str] = frozenset()


# --- the checker ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    key: str  # what KNOWN_VIOLATIONS lists: no line numbers, so edits elsewhere in a file do not change it
    detail: str  # where, for the failure message


def modules(root: Path, packages: Iterable[str]) -> dict[str, tuple[Path, bool]]:
    """Every module under ``root/<package>``: dotted name -> (file, whether it is a package's __init__)."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_init = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return found


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement at any depth, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(node.orelse)  # an else branch runs
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _owner(name: str, known: Mapping[str, object]) -> str | None:
    """``name`` or the nearest package above it that is one of ``known``."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, dict[str, int]]:
    """module -> {imported module among ``packages``: line of the first such import}."""
    mods = modules(root, packages)
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_init) in mods.items():
        edges: dict[str, int] = {}
        for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_owner(alias.name, mods) for alias in node.names]
            else:
                if node.level:  # relative: from the module's own package, then up one per extra dot
                    base = name.split(".") if is_init else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    source = node.module or ""
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    targets.append(sub if sub in mods else _owner(source, mods))
            for target in targets:
                if target is not None and target != name:
                    edges[target] = min(edges.get(target, node.lineno), node.lineno)
        graph[name] = edges
    return graph


def strongly_connected(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """The components of more than one module (each sorted), in a stable order."""
    def reach(start: str) -> set[str]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in graph.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in graph}
    components, placed = [], set()
    for m in sorted(graph):
        if m in placed:
            continue
        component = sorted(n for n in reachable[m] if m in reachable.get(n, ()))
        placed.update(component)
        if len(component) > 1:
            components.append(component)
    return components


def _matches(module: str, entry: str) -> bool:
    if entry.endswith(".__init__"):
        return module == entry.removesuffix(".__init__")
    return module == entry or module.startswith(entry + ".")


def layer_of(module: str, layers: Sequence[Sequence[str]]) -> tuple[int, str] | None:
    """(layer index, the entry that places it) for the most specific entry, or None if unplaced."""
    best = None
    for i, layer in enumerate(layers):
        for entry in layer:
            if _matches(module, entry) and (best is None or len(entry) > len(best[1])):
                best = (i, entry)
    return best


def violations(root: Path, packages: Iterable[str], layers: Sequence[Sequence[str]],
               forbidden: Mapping[str, Sequence[str]]) -> list[Violation]:
    """Every cycle, forbidden import, upward import and unplaced module under ``root``."""
    graph = import_graph(root, packages)
    found = []
    for component in strongly_connected(graph):
        inside = set(component)
        lines = [f"{a}:{graph[a][b]} imports {b}" for a in component for b in sorted(graph[a]) if b in inside]
        found.append(Violation("cycle: " + " <-> ".join(component), "; ".join(lines)))
    for module in sorted(graph):
        if layer_of(module, layers) is None:
            found.append(Violation(f"unplaced: {module}", "add it (or a package above it) to LAYERS"))
    for module, edges in sorted(graph.items()):
        top = module.split(".")[0]
        for target, line in sorted(edges.items()):
            if target.split(".")[0] in forbidden.get(top, ()):
                found.append(Violation(f"forbidden: {module} -> {target}",
                                       f"{module}:{line} imports {target}: {top} never imports {target.split('.')[0]}"))
                continue
            here, there = layer_of(module, layers), layer_of(target, layers)
            if here is not None and there is not None and there[0] > here[0]:
                found.append(Violation(f"upward: {module} -> {target}",
                                       f"{module}:{line} imports {target} (layer {there[1]!r} is above {here[1]!r})"))
    return found


def _report(title: str, items: Iterable[Violation]) -> str:
    return title + "\n" + "\n".join(f"  {v.key}\n      {v.detail}" for v in items)


# --- the tests --------------------------------------------------------------------------------


def test_layers_name_each_entry_once() -> None:
    entries = [entry for layer in LAYERS for entry in layer]
    assert len(entries) == len(set(entries)), "an entry appears in two layers of LAYERS"


def test_no_new_cycles_or_upward_imports() -> None:
    new = [v for v in violations(ROOT, PACKAGES, LAYERS, FORBIDDEN) if v.key not in KNOWN_VIOLATIONS]
    assert not new, _report(
        "import layering violated (tests/test_layering.py explains the rules; fix by moving code to a lower "
        "module, or by importing a name for annotations only under `if TYPE_CHECKING:`):", new)


def test_known_violations_still_occur() -> None:
    """The list can only shrink: a violation that was fixed must leave it."""
    keys = {v.key for v in violations(ROOT, PACKAGES, LAYERS, FORBIDDEN)}
    gone = sorted(KNOWN_VIOLATIONS - keys)
    assert not gone, "these KNOWN_VIOLATIONS no longer occur; delete them from tests/test_layering.py:\n  " + \
        "\n  ".join(gone)


def test_transcoders_and_graphs_have_no_known_violations() -> None:
    """Only circuits (restructured under issue #15) may have known violations."""
    def modules_of(key: str) -> list[str]:
        return key.split(": ", 1)[1].replace(" <-> ", " -> ").split(" -> ")

    assert not [k for k in KNOWN_VIOLATIONS if any(not m.startswith("circuits") for m in modules_of(k))]


def test_the_checker_finds_planted_violations(tmp_path: Path) -> None:
    """A fake pair of packages with a planted cycle (through a function-level import and a package's
    ``__init__``), a planted upward import and a forbidden one, next to imports that must not count."""
    files = {
        "low/__init__.py": "from low.a import A\n",  # re-exports a submodule: allowed
        "low/a.py": "import low.b\nA = 1\n",
        "low/b.py": "def f():\n    from low import a  # a function-level import closes the cycle\n",
        "low/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from high.x import X  # not at run time\n"
                    "else:\n    pass\nfrom . import a\nfrom .a import A\n",
        "low/d.py": "import high.x\n",  # upward
        "low/sub/__init__.py": "from .. import c\n",  # relative, two levels
        "low/e.py": "from low.sub import c\n",  # `from pkg import name` where name is not a module: pkg
        "high/__init__.py": "",
        "high/x.py": "import low.c\nX = 1\n",
        "high/y.py": "def g():\n    import top.z\n",  # forbidden at any depth
        "top/__init__.py": "",
        "top/z.py": "import high.x\n",
        "back/__init__.py": "from back.m import M\n",  # re-export ...
        "back/m.py": "from back import other\nM = 1\n",  # ... and a submodule importing the __init__ back
    }
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    layers = [("low", "back"), ("high",), ("top",)]
    found = violations(tmp_path, ["low", "high", "top", "back"], layers, {"high": ("top",)})
    graph = import_graph(tmp_path, ["low", "high", "top", "back"])
    assert graph["low.c"] == {"low.a": 6}  # TYPE_CHECKING skipped; relative imports resolved
    assert graph["low.sub"] == {"low.c": 1} and graph["low.e"] == {"low.sub": 1}
    assert {v.key for v in found} == {
        "cycle: low.a <-> low.b",
        "cycle: back <-> back.m",
        "upward: low.d -> high.x",
        "forbidden: high.y -> top.z",
    }, _report("the checker found:", found)
    cycle = next(v for v in found if v.key == "cycle: low.a <-> low.b")
    assert "low.a:1 imports low.b" in cycle.detail and "low.b:2 imports low.a" in cycle.detail
    unplaced = violations(tmp_path, ["low", "high", "top", "back"], [("low",)], {})
    assert {v.key for v in unplaced} >= {"unplaced: high.x", "unplaced: top", "unplaced: back.m"}
