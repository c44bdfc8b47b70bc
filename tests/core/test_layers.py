"""The pipeline's layer order holds: a module imports only from its own layer or layers to its left."""

from __future__ import annotations

import ast
from pathlib import Path

import cxrlab

# evaluation sits left of training: a run validates, picks its epoch and sets its operating point with the
# evaluation layer's metrics; the workflows (train --folds, evaluate with explanations, crossfit masks) compose
# training, evaluation and explanation below the studies that use them
LAYERS = {"core": 0, "data": 1, "preprocess": 2, "models": 3, "evaluate": 4, "explain": 4, "train": 5, "workflows": 6,
          "study": 7, "cli": 8, "serve": 8}
SIBLINGS = {("cli", "serve")}  # `cxrlab serve` starts the app; evaluate and explain never import each other
ROOT = Path(cxrlab.__file__).parent


def _imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):  # function-level imports count too
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[1] for n in names if n.startswith("cxrlab.") and n.count(".") >= 1}
    return found


def test_every_module_imports_only_from_layers_to_its_left():
    assert set(LAYERS) == {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if len(parts) < 2:
            continue
        layer = parts[0]
        for imported in _imported_layers(path):
            if LAYERS[imported] > LAYERS[layer] or (LAYERS[imported] == LAYERS[layer] and imported != layer
                                                    and (layer, imported) not in SIBLINGS):
                wrong.append(f"{path.relative_to(ROOT)} imports cxrlab.{imported}")
    assert wrong == []
