"""Copies of shared helpers must not drift from their original (diffusers' utils/check_copies.py).

Each standalone script may copy a small helper from another script. The copy is marked with a line
`# Copied from <path>:<name>` directly above its `def`, `class` or assignment; this test compares
the copy's source with the original's, statement for statement.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO_ROOT

MARKER = re.compile(r"^\s*# Copied from (?P<path>[\w./-]+\.py):(?P<name>\w+)\s*$")


def top_level_statement(tree: ast.Module, name: str) -> ast.stmt | None:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return node
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return node
    return None


def statement_source(path: Path, node: ast.stmt) -> str:
    return ast.get_source_segment(path.read_text(encoding="utf-8"), node)


def marked_copies() -> list[tuple[Path, int, str, str]]:
    copies = []
    for folder in ("tools", "evals"):
        for path in sorted((REPO_ROOT / folder).glob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                match = MARKER.match(line)
                if match:
                    copies.append((path, number, match["path"], match["name"]))
    return copies


def test_copies_are_marked_somewhere():
    assert marked_copies(), "expected at least one '# Copied from' helper in tools/ or evals/"


@pytest.mark.parametrize("copy_path,line,original_path,name", marked_copies(),
                         ids=lambda value: str(value.name) if isinstance(value, Path) else str(value))
def test_copy_matches_original(copy_path, line, original_path, name):
    original_file = REPO_ROOT / original_path
    assert original_file.is_file(), f"{copy_path.name}:{line} names missing file {original_path}"
    original = top_level_statement(ast.parse(original_file.read_text(encoding="utf-8")), name)
    assert original is not None, f"{original_path} has no top-level {name}"
    copy_tree = ast.parse(copy_path.read_text(encoding="utf-8"))
    following = [node for node in copy_tree.body
                 if (getattr(node, "decorator_list", None) and node.decorator_list[0].lineno == line + 1)
                 or node.lineno == line + 1]
    assert following, f"{copy_path.name}:{line}: the marker must sit directly above the copied {name}"
    copied = following[0]
    assert getattr(copied, "name", name) == name or top_level_statement(copy_tree, name) is copied
    assert statement_source(copy_path, copied) == statement_source(original_file, original), (
        f"{copy_path.relative_to(REPO_ROOT)}:{line + 1} {name} drifted from {original_path}; "
        f"copy the original again")
