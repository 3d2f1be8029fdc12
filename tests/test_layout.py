"""The layers of src/vcraft import only downwards (docs/architecture.md): a front end may use the pipeline, the
pipeline the loaders, and so on, never the other way round."""

from __future__ import annotations

import ast
from pathlib import Path

import vcraft

ROOT = Path(vcraft.__file__).parent
# Top to bottom; a module may import from its own layer and those below it. The package's __init__ and __main__
# are its facade and entry point, above everything.
LAYERS = {"app": 5, "pipeline": 4, "train": 4, "loaders": 3, "sampling": 2, "models": 1, "data": 1,
          "config": 0, "videocrafter_yaml": 0, "errors": 0}


def layer_of(module: str) -> str:
    return module.removeprefix("vcraft.").split(".")[0]


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        if path.name in ("__init__.py", "__main__.py") and path.parent == ROOT:
            continue
        own = LAYERS[layer_of(name)]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vcraft."):
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("vcraft.")]
            else:
                continue
            upward += [f"{name} imports {t}" for t in targets if LAYERS[layer_of(t)] > own]
    assert not upward, upward


def test_every_layer_is_known():
    assert {layer_of(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in ROOT.rglob("*.py")
            if p.parent != ROOT or p.name not in ("__init__.py", "__main__.py")} == set(LAYERS)
