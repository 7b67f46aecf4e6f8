"""The package boundaries that make the tree readable (issue 9).

``core`` imports neither ``app`` nor ``jobs``; ``app`` (web) and ``jobs`` (workers) never
import each other; the chat and CSV-import wings never import each other. Checked twice:
statically over every import statement, and at run time by importing each entry point
in a fresh interpreter and looking at ``sys.modules`` (which also catches an import done
indirectly, through a third-party module or a string).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package -> packages it must never import (prefix match on dotted names)
FORBIDDEN = {
    "core": ("app", "jobs"),
    "app": ("jobs",),
    "jobs": ("app",),
    "jobs.chat": ("jobs.csvimport",),
    "jobs.csvimport": ("jobs.chat",),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _crosses(importer: str, imported: str) -> bool:
    return any(
        _within(importer, owner) and any(_within(imported, b) for b in banned)
        for owner, banned in FORBIDDEN.items()
    )


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_no_import_statement_crosses_a_boundary() -> None:
    crossings = []
    for package in ("core", "app", "jobs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = _module_name(path)
            crossings += [
                f"{importer} -> {name}" for name in _imports(path) if _crosses(importer, name)
            ]
    assert crossings == []


def _loaded_after_import(module: str) -> list[str]:
    code = (
        "import importlib, json, sys;"
        f"importlib.import_module({module!r});"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return [str(name) for name in json.loads(out.splitlines()[-1])]


@pytest.mark.parametrize(
    ("entry", "banned"),
    [
        # A chat worker must not load the web stack (routing, JWT, rate limiter).
        ("jobs.chat.job", ("app", "jobs.csvimport", "starlette.routing", "jwt", "limits")),
        ("jobs.csvimport.job", ("app", "jobs.chat", "starlette.routing", "langgraph")),
        ("jobs.worker.supervisor", ("app", "starlette.routing")),
        ("core.events", ("app", "jobs")),
        ("app.main", ("jobs",)),
    ],
)
def test_entry_point_loads_only_its_side(entry: str, banned: tuple[str, ...]) -> None:
    loaded = _loaded_after_import(entry)
    wrong = [m for m in loaded if any(_within(m, b) for b in banned)]
    assert wrong == []
