"""The script stays lean (issue: the lean script): at most 3,000 lines, no function over 80 lines,
and a README a newcomer can finish (at most 40,000 bytes). The counted code (the packager's
smallest wrapper, at most PR #2135's 37,155 bytes) is asserted in test_package.py."""
from __future__ import annotations

import ast

from conftest import ROOT

SOURCE = (ROOT / "train_gpt.py").read_text(encoding="utf-8")


def test_train_gpt_has_at_most_3000_lines():
    assert len(SOURCE.splitlines()) <= 3000


def test_no_function_is_longer_than_80_lines():
    longest = {node.name: node.end_lineno - node.lineno + 1 for node in ast.walk(ast.parse(SOURCE))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert {name: n for name, n in longest.items() if n > 80} == {}


def test_the_readme_is_at_most_40000_bytes():
    assert len((ROOT / "README.md").read_bytes()) <= 40_000
