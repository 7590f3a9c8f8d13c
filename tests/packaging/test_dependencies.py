"""Each workspace member declares every third-party package its code imports, in its own
pyproject: an image installs one member with its declared dependencies alone, so a module
that only arrives as another package's dependency (or through ``sluiceway-common``) is one
upgrade away from missing. Another workspace member counts only when listed too."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def normalized(name: str) -> str:
    """A distribution's name as pip and uv compare them (``PyYAML`` is ``pyyaml``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def members() -> dict[str, dict[str, Any]]:
    """Each member's path, as the root pyproject lists it, and its pyproject."""
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {
        path: tomllib.loads((ROOT / path / "pyproject.toml").read_text())
        for path in root["tool"]["uv"]["workspace"]["members"]
    }


MEMBERS = members()


def own_modules(path: str) -> set[str]:
    """The top-level packages and modules a member ships (those under its ``src``)."""
    return {
        entry.stem if entry.is_file() else entry.name
        for entry in (ROOT / path / "src").iterdir()
        if entry.suffix == ".py" or (entry / "__init__.py").exists()
    }


def declared(pyproject: dict[str, Any]) -> set[str]:
    """The distributions a member's ``dependencies`` name, without versions or extras."""
    names = set()
    for requirement in pyproject["project"].get("dependencies", []):
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert name is not None, requirement
        names.add(normalized(name.group()))
    return names


def imported(path: str) -> dict[str, list[str]]:
    """The top-level module of each absolute import in a member's source, anywhere in a
    file, with the files that import it."""
    found: defaultdict[str, list[str]] = defaultdict(list)
    for source in sorted((ROOT / path / "src").rglob("*.py")):
        where = str(source.relative_to(ROOT))
        for node in ast.walk(ast.parse(source.read_text(), where)):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                module = name.partition(".")[0]
                if where not in found[module]:
                    found[module].append(where)
    return found


def providers() -> dict[str, set[str]]:
    """Which distributions provide each importable top-level module: the installed ones,
    and the workspace members (installed editable, so their metadata lists no modules)."""
    provided = {
        module: {normalized(name) for name in names}
        for module, names in importlib.metadata.packages_distributions().items()
    }
    for path, pyproject in MEMBERS.items():
        for module in own_modules(path):
            provided[module] = {normalized(pyproject["project"]["name"])}
    return provided


@pytest.mark.parametrize("path", sorted(MEMBERS))
def test_every_import_of_a_member_is_declared_by_that_member(path: str) -> None:
    pyproject = MEMBERS[path]
    member = pyproject["project"]["name"]
    own, allowed, provided = own_modules(path), declared(pyproject), providers()
    modules = imported(path)
    assert modules, f"{path}: no imports found under src/"
    missing = []
    for module, files in sorted(modules.items()):
        if module in sys.stdlib_module_names or module in own:
            continue
        distributions = provided.get(module, set())
        if not distributions:
            missing.append(f"{member} ({path}) imports {module} ({files[0]}), "
                           "which no installed distribution provides")  # fmt: skip
        elif not distributions & allowed:
            missing.append(f"{member} ({path}) imports {module} ({files[0]}) but does not "
                           f"declare {' or '.join(sorted(distributions))}")  # fmt: skip
    assert not missing, "\n".join(missing)
