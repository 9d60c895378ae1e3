"""The layering of ARCHITECTURE.md, checked by parsing imports (no module is imported to check it).

    L0 config, units, errors      L1 curriculum, presets, sizes      L2 plan | model | data (siblings)
    L3 train, export, inference, report (users of the model and data)      L4 cli, commands

A module imports only from layers below it, from its own layer (L0, L1, L3, L4) or from inside its own
package; the L2 packages are siblings and do not import each other, without exceptions (the shape
arithmetic that both the planner and the model read is `gradus.sizes`, a layer below them). The pure
layers (config, units, errors, curriculum, presets, sizes, plan) never import torch nor anything from
data/model/train/cli; `gradus.data` never imports `gradus.model` or `gradus.train`;
the checkpoint code never imports the trainer; only `gradus/cli.py` reads `sys.argv`. No module-level import
circle anywhere in gradus: a module never imports (directly or through others) one that imports it back when
it loads; an import inside the function that needs it is how a circle is broken. Inside gradus/config not even
that: its modules depend one way, imports inside functions included (the schema and its rules never reach
back to gradus.config.checks, which reads them).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradus"
LAYER = {
    "config": 0, "units": 0, "errors": 0, "files": 0, "": 0,
    "curriculum": 1, "presets": 1, "sizes": 1,
    "plan": 2, "model": 2, "data": 2,
    "train": 3, "export": 3, "inference": 3, "report": 3,
    "experiments": 3.5,  # sweeps and comparisons: above train (they run it), below cli/commands
    "cli": 4, "commands": 4, "__main__": 4,  # python -m gradus: the cli by another door
}
PURE = ("config", "units", "errors", "files", "curriculum", "presets", "sizes", "plan")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements that run when the module is imported: everything but function bodies and the body of
    ``if TYPE_CHECKING:`` (class bodies, ``try``, ``with`` and plain ``if`` blocks run at import)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from module_level(node.orelse)
            continue
        yield node
        for block in ("body", "orelse", "finalbody"):
            yield from module_level(getattr(node, block, None) or [])
        for inner in (getattr(node, "handlers", None) or []) + (getattr(node, "cases", None) or []):
            yield from module_level(inner.body)


def imports(path: Path, *, only_module_level: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved, nested ones too
    (``only_module_level``: those that run when the module is imported, :func:`module_level`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in module_level(tree.body) if only_module_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from gradus import model` (or `from gradus.model import gpt`) imports a module too
            for alias in node.names:
                target = PACKAGE.parent.joinpath(*f"{module}.{alias.name}".split("."))
                if module.startswith("gradus") and (target.with_suffix(".py").exists() or target.is_dir()):
                    found.append((node.lineno, f"{module}.{alias.name}"))
    return found


def part_of(module: str) -> str | None:
    """The top-level part of gradus a module belongs to ('' for gradus itself), None outside gradus."""
    if module == "gradus":
        return ""
    if module.startswith("gradus."):
        return module.split(".")[1]
    return None


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_there_is_something_to_check():
    assert PACKAGE / "config" / "schema.py" in FILES and PACKAGE / "sizes.py" in FILES
    assert PACKAGE / "curriculum" / "state.py" in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_imports_only_from_lower_layers(path):
    own = part_of(module_name(path))
    layer = LAYER.get(own)
    assert layer is not None, f"{own} has no layer: add it to LAYER here (and to ARCHITECTURE.md)"
    bad = []
    for line, module in imports(path):
        other = part_of(module)
        if other is None or other == own or other == "":
            continue
        other_layer = LAYER.get(other, 99)
        if other_layer < layer or (other_layer == layer != 2):
            continue
        bad.append(f"{path.name}:{line} imports {module} (layer {other_layer}) from layer {layer}")
    assert not bad, "\n".join(bad)


PURE_FILES = [p for p in FILES if part_of(module_name(p)) in PURE]


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_pure_layers_import_no_torch_and_nothing_above(path):
    bad = []
    for line, module in imports(path):
        if module == "torch" or module.startswith("torch."):
            bad.append(f"{path.name}:{line} imports {module}")
        elif part_of(module) in ("data", "model", "train", "cli", "commands"):
            bad.append(f"{path.name}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_data_never_imports_model_or_train():
    bad = [
        f"{path.relative_to(PACKAGE)}:{line} imports {module}"
        for path in FILES if part_of(module_name(path)) == "data"
        for line, module in imports(path) if part_of(module) in ("model", "train", "cli", "commands")
    ]
    assert not bad, "\n".join(bad)


def test_the_storage_never_imports_the_trainer():
    """The checkpoint code (gradus/train/storage/: the run directory, the checkpoints, FSDP's) takes parts with
    ``state_dict()``/``load_state_dict()`` and never the trainer."""
    paths = sorted((PACKAGE / "train" / "storage").glob("*.py"))
    assert PACKAGE / "train" / "storage" / "checkpoint.py" in paths
    bad = [f"{path.name}:{line} imports {m}" for path in paths for line, m in imports(path)
           if m.startswith("gradus.train.trainer")]
    assert not bad, "\n".join(bad)


def private_imports(path: Path) -> list[str]:
    """Where the file takes a private name (``_name``, not a dunder) from another gradus module:
    ``from gradus.x import _name``, or ``mod._name`` on a gradus module it imported (``from gradus.train import
    checkpoint``; ``import gradus.x as mod``). A name one module lends another is public: give it a public name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def private(attr: str) -> bool:
        return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))

    bad, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            if part_of(module) is None:
                continue
            for alias in node.names:
                target = PACKAGE.parent.joinpath(*f"{module}.{alias.name}".split("."))
                if target.with_suffix(".py").exists() or target.is_dir():
                    modules.add(alias.asname or alias.name)  # a module: its attributes are checked below
                elif private(alias.name):
                    bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {alias.name} from {module}")
        elif isinstance(node, ast.Import):
            modules.update(alias.asname for alias in node.names if alias.asname and part_of(alias.name) is not None)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and private(node.attr)):
            bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return bad


def test_the_private_import_finder(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", tmp_path / "gradus")
    (tmp_path / "gradus" / "train").mkdir(parents=True)
    for name in ("__init__.py", "train/__init__.py", "train/checkpoint.py"):
        (tmp_path / "gradus" / name).write_text("")
    probe = tmp_path / "gradus" / "train" / "probe.py"
    probe.write_text("from gradus.train.checkpoint import _fsync, public, __version__\n"
                     "from .checkpoint import _also\nfrom gradus.train import checkpoint\n"
                     "import gradus.train.checkpoint as ck\nimport os\n"
                     "checkpoint._hidden(); ck._other(); checkpoint.fine(); os._exit(0)\n")
    assert private_imports(probe) == ["train/probe.py:1 imports _fsync from gradus.train.checkpoint",
                                      "train/probe.py:2 imports _also from gradus.train.checkpoint",
                                      "train/probe.py:6 uses checkpoint._hidden", "train/probe.py:6 uses ck._other"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_no_module_takes_another_modules_private_name(path):
    """A leading underscore says "this module's own": a name another module needs gets a public name (in
    the module that owns it, or in a fitting home such as ``gradus.files``)."""
    bad = private_imports(path)
    assert not bad, "\n".join(bad)


def test_only_cli_reads_argv():
    bad = []
    for path in FILES:
        if path == PACKAGE / "cli.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "argv" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} reads sys.argv")
            if isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "argv" for a in node.names):
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports argv from sys")
    assert not bad, "\n".join(bad)


def test_pure_modules_load_without_torch():
    """The same at run time: importing the pure layers pulls in no torch (fast `gradus schedule`, `plan`)."""
    modules = ["gradus.config", "gradus.units", "gradus.curriculum", "gradus.presets", "gradus.sizes", "gradus.plan"]
    code = f"import sys, {', '.join(modules)}; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or "importing the pure layers loaded torch"


# ------------------------------------------------------------------------------------------- circles
KNOWN_CIRCLES: dict[frozenset[str], str] = {}
"""Module-level circles tolerated for now, by their modules, each with the reason; none, keep it so."""


def module_graph() -> dict[str, set[str]]:
    """Every gradus module and the gradus modules it imports when it loads."""
    names = {module_name(p) for p in FILES}
    graph = {}
    for path in FILES:
        own = module_name(path)
        graph[own] = {m for _, m in imports(path, only_module_level=True) if m in names and m != own}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle for each group of modules that import each other round (a strongly connected group of two
    or more), as the shortest path from the group's first module back to itself: ['a', 'b', 'a']."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group: set[str] = set()
            while v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in order:
            visit(v)
    found = []
    for group in groups:  # breadth first from the group's first module until it comes back
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        circle: list[str] | None = None
        while circle is None:
            ahead = []
            for v in frontier:
                for w in sorted(graph[v] & group):
                    if w == start:
                        circle = circle or paths[v] + [start]
                    elif w not in paths:
                        paths[w] = paths[v] + [w]
                        ahead.append(w)
            frontier = ahead
        found.append(circle)
    return sorted(found)


def test_the_circle_finder():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "x": {"y"}, "y": {"x", "a"}}
    assert circles(graph) == [["a", "b", "c", "a"], ["x", "y", "x"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_module_level_leaves_out_function_bodies_and_type_checking():
    tree = ast.parse(
        "import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\ntry:\n    import d\n"
        "except ImportError:\n    import e\nclass K:\n    import f\ndef g():\n    import h\n"
    )
    found = [alias.name for node in module_level(tree.body) if isinstance(node, ast.Import) for alias in node.names]
    assert found == ["a", "c", "d", "e", "f"]


def test_no_module_level_import_circle():
    """Inside a package or across packages: a circle makes a module's names depend on which module was
    imported first, and the layering test cannot see it (both ends sit in one package)."""
    graph = module_graph()
    assert graph["gradus.train.build"] >= {"gradus.train.runtime"}  # the graph is really read
    found = [c for c in circles(graph) if frozenset(c) not in KNOWN_CIRCLES]
    assert not found, "module-level import circles (move the shared piece into a module both can import, or " \
        "import inside the function that needs it):\n" + "\n".join(" -> ".join(c) for c in found)


def config_graph() -> dict[str, set[str]]:
    """Every module of gradus/config and those of them it imports anywhere, inside functions too."""
    paths = [p for p in FILES if part_of(module_name(p)) == "config"]
    names = {module_name(p) for p in paths}
    return {module_name(p): {m for _, m in imports(p) if m in names and m != module_name(p)} for p in paths}


def test_config_modules_depend_one_way_even_inside_functions():
    """checks reads the schema and its rules; neither they nor anything they import reaches back to checks,
    not even by an import at call time (which the module-level circle test does not see). The whole package
    has no circle either way."""
    graph = config_graph()
    assert graph["gradus.config.checks"] >= {"gradus.config.schema", "gradus.config.cross_section"}  # really read
    below: set[str] = set()  # what checks imports, directly or through others
    ahead = list(graph["gradus.config.checks"])
    while ahead:
        module = ahead.pop()
        if module not in below:
            below.add(module)
            ahead += graph[module]
    bad = [f"{m} imports gradus.config.checks" for m in sorted(below) if "gradus.config.checks" in graph[m]]
    bad += [" -> ".join(c) for c in circles(graph)]
    assert not bad, "gradus/config must depend one way (move what both need below both):\n" + "\n".join(bad)
