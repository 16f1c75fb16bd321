"""The registered model names and their families, read from the source of `models/` without importing it.

Importing `models` loads torch, timm and torchvision (15–20 s on a 2-core machine); the Snakefile needs only
the names and families to validate the registry, on every parse. Each family module registers its variants
with `register_family(...)` from its `VARIANTS` dict (and `ALIASES`, where it has them), so the keys of those
dicts in the source give the same list; tests/test_models.py checks it against `models.list_models()` and
`models.family()`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def _registered(path: Path) -> list[str]:
    """The keys of the module's `VARIANTS` and `ALIASES` dicts, when it calls `register_family` (at its top level,
    as each family does after defining them)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if not any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and isinstance(n.value.func, ast.Name)
               and n.value.func.id == "register_family" for n in tree.body):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                isinstance(t, ast.Name) and t.id in ("VARIANTS", "ALIASES") for t in node.targets):
            names += [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
    return names


@functools.cache
def families() -> dict[str, str]:
    """model name → family (its module's name), for every registered model."""
    index = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        for name in _registered(path):
            index[name] = path.stem
    return index


def list_models() -> list[str]:
    return sorted(families())


def family(name: str) -> str:
    return families()[name]
