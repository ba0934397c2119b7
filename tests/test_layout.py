"""The house layout: `daemon/` is the product and only the product; tooling lives in `tools/`.

Nothing in daemon/ imports tools (the wheel ships daemon alone, so such an import would break
an installed taskd), and no module grows past 450 lines.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from conftest import ROOT

MAX_LINES = 450


def imported_modules(path: Path) -> list[str]:
    """Every module an `import` or `from ... import` statement of the file names."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_nothing_in_the_daemon_package_imports_the_tooling() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: import {name}"
        for path in sorted((ROOT / "daemon").rglob("*.py"))
        for name in imported_modules(path)
        if name == "tools" or name.startswith("tools.")
    ]
    assert not offenders, offenders


def test_the_wheel_packages_only_the_daemon() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]
    assert all(p == "daemon" or p.startswith("daemon.") for p in packages), packages


def test_no_daemon_module_is_over_450_lines() -> None:
    too_long = {
        path.name: line_count(path)
        for path in (ROOT / "daemon").rglob("*.py")
        if line_count(path) > MAX_LINES
    }
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"


def test_no_tools_module_is_over_450_lines() -> None:
    too_long = {
        str(path.relative_to(ROOT)): line_count(path)
        for path in (ROOT / "tools").rglob("*.py")
        if line_count(path) > MAX_LINES
    }
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"
