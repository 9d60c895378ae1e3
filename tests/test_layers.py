"""The layering of ARCHITECTURE.md, checked by parsing imports (no module is imported to check it).

    L0 config, units, errors      L1 curriculum, presets, sizes      L2 plan | model | data (siblings)
    L3 train, export, inference, report (users of the model and data)      L4 cli, commands

A module imports only from layers below it, from its own layer (L0, L1, L3, L4) or from inside its own
package; the L2 packages are siblings and do not import each other, without exceptions (the shape
arithmetic that both the planner and the model read is `gradus.sizes`, a layer below them). The pure
layers (config, units, errors, curriculum, presets, sizes, plan) never import torch nor anything from
data/model/train/cli; `gradus.data` never imports `gradus.model` or `gradus.train`;
the checkpoint code never imports the trainer; only `gradus/cli.py` reads `sys.argv`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
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


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
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


def test_checkpoint_never_imports_the_trainer():
    path = PACKAGE / "train" / "checkpoint.py"
    bad = [f"checkpoint.py:{line} imports {m}" for line, m in imports(path) if m.startswith("gradus.train.trainer")]
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
