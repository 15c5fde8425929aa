"""Shape rules for the runtime package that a review would otherwise have to re-check by hand."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import practice_sync

PACKAGE = Path(practice_sync.__file__).parent
MAX_FUNCTION_LINES = 60


def test_no_function_in_the_runtime_package_is_over_60_lines() -> None:
    long: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} {lines}")
    assert long == []


def test_the_only_top_level_import_package_installed_is_practice_sync() -> None:
    owned = {
        name
        for name, dists in importlib.metadata.packages_distributions().items()
        if "practice-sync" in dists
    }
    assert owned == {"practice_sync"}
    assert importlib.metadata.distribution("practice-sync").read_text("top_level.txt") == (
        "practice_sync\n"
    )
