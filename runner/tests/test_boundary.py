"""Nothing a service runs depends on the runner: shared and the services never import
``eostream.runner`` and never list ``eostream-runner`` as a dependency (ADR 0009)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIBRARY_SOURCES = [ROOT / "shared" / "src", *sorted((ROOT / "services").glob("*/src"))]


def imported_modules(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def strings_in_code(tree: ast.AST) -> set[str]:
    """String constants, docstrings left out."""
    docstrings = {
        id(owner.body[0].value)
        for owner in ast.walk(tree)
        if isinstance(owner, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and owner.body
        and isinstance(owner.body[0], ast.Expr)
        and isinstance(owner.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_shared_and_the_services_never_import_the_runner() -> None:
    offenders = []
    for source in LIBRARY_SOURCES:
        for path in sorted(source.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            modules = imported_modules(tree)
            if any(m == "eostream.runner" or m.startswith("eostream.runner.") for m in modules):
                offenders.append(f"{path.relative_to(ROOT)}: imports eostream.runner")
            # a string naming it would start it in a subprocess just the same
            if any("eostream.runner" in text for text in strings_in_code(tree)):
                offenders.append(f"{path.relative_to(ROOT)}: names eostream.runner in code")
    assert offenders == []


def test_no_service_or_shared_depends_on_the_runner() -> None:
    for project in [ROOT / "shared", *sorted((ROOT / "services").iterdir())]:
        meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
        names = [*meta.get("dependencies", [])]
        for extra in meta.get("optional-dependencies", {}).values():
            names += extra
        assert not [n for n in names if n.startswith("eostream-runner")], project.name


def test_shared_holds_no_command_demo_or_supervisor() -> None:
    shared = ROOT / "shared" / "src" / "eostream" / "shared"
    for gone in ("cli", "demo", "driver", "processes", "download", "datasets", "dlq_cli"):
        assert not (shared / f"{gone}.py").exists(), f"{gone}.py belongs to the runner"
    assert not any(shared.glob("*.csv"))
    scripts = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())["project"]
    assert "scripts" not in scripts, "the eostream command is the runner's"
