"""The architecture of docs/architecture.md, checked: every SQL string lives under `store/`, and the import
layers (`lint-imports`, the contracts in pyproject.toml) hold."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "insource"
# A statement's first words: prose that happens to start with "Update" or "select" does not match (upper case).
SQL_START = re.compile(
    r"\s*(SELECT\s|INSERT\s+(INTO|OR)\s|UPDATE\s+\w+\s+SET\s|DELETE\s+FROM\s|CREATE\s+(TABLE|INDEX|UNIQUE|VIEW)\s"
    r"|ALTER\s+TABLE\s|DROP\s+(TABLE|INDEX|VIEW)\s|WITH\s+\w+\s+AS\s*\()"
)


def sql_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string constant (f-strings: their leading literal part) that starts like SQL."""
    found = []
    tree = ast.parse(source)
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if id(node) in parts:
            continue
        if isinstance(node, ast.JoinedStr):
            first = node.values[0] if node.values else None
            text = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        else:
            continue
        if SQL_START.match(text):
            found.append((node.lineno, text.strip().splitlines()[0][:80]))
    return found


def test_the_scan_finds_sql() -> None:
    """The scan itself can fail: it sees plain, f-string and multi-line SQL, and not prose."""
    source = (
        'a = "SELECT id FROM keys"\n'
        'b = f"UPDATE keys SET revoked_at={1}"\n'
        'c = """\n  INSERT INTO audit VALUES (?)"""\n'
        'd = "Select the best student; update the route set by the operator"\n'
        'e = "a DELETE FROM in the middle is prose"\n'
    )
    assert [line for line, _ in sql_strings(source)] == [1, 2, 3]


def test_no_sql_outside_store() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "store":
            continue
        offenders += [f"{rel}:{line}: {text}" for line, text in sql_strings(path.read_text(encoding="utf-8"))]
    assert offenders == [], "SQL outside src/insource/store/ (put it in a query module):\n" + "\n".join(offenders)


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")
def test_import_layers_hold() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    lint = shutil.which("lint-imports")
    assert lint is not None
    done = subprocess.run([lint], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout, done.stdout[-3000:]


def test_serving_loads_no_training_code() -> None:
    """Importing the server loads neither the training packages nor heavy ML libraries."""
    code = (
        "import sys, insource.server.app\n"
        "bad = [m for m in sys.modules if m.startswith(('insource.distill', 'insource.evals', 'torch', 'numpy'))]\n"
        "print(bad)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
