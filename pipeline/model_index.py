"""The registered model names and their families, read from the source of `models/` without importing it.

Importing `models` loads torch, timm and torchvision (15–20 s on a 2-core machine); the Snakefile needs only
the names and families to validate the registry, on every parse. Each family module registers its builders
with the `@register_model(...)` decorator, so parsing the modules gives the same list;
tests/test_models.py checks it against `models.list_models()` and `models.family()`.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


def _registered(path: Path) -> list[str]:
    names = []
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Name) and target.id == "register_model":
                    names.append(node.name)
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
