"""Which part of `sam3d` may import which (docs/DEVELOPING.md), read from every import statement
of the package, lazy ones inside functions included; and the package's client is the Slicer
module's client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sam3d"
REPO = PACKAGE.parents[1]
# package -> the packages it may import; sam3d's top-level modules (the version, errors) are
# open to all. A `<package>/commands.py` (a CLI face) may import every package, but no other
# commands module, and no other module imports a commands module.
ALLOWED = {
    "client": set(),
    "data": set(),
    "model": {"data"},
    "engine": {"data", "model", "client"},
    "serve": {"data", "model", "engine", "client"},
    "evaluate": {"data", "model", "engine"},
    "train": {"data", "model", "engine", "evaluate"},
    "batch": {"data", "model", "engine", "evaluate", "client"},
    "web": set(),
}
TOP_LEVEL = {"sam3d", "sam3d.errors"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported(path: Path) -> set[str]:
    """The sam3d modules one file imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from . import x`: x is a module or a name of the package
                found.add(f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base)
    return {m for m in found if m == "sam3d" or m.startswith("sam3d.")}


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        own = name.split(".")[1] if "." in name else None
        for target in sorted(imported(path)):
            other = target.split(".")[1] if "." in target else None
            if target.endswith(".commands") and target != name:
                bad.append(f"{name} imports the command module {target}")
            elif target == "sam3d.cli" and name != "sam3d.__main__":
                bad.append(f"{name} imports sam3d.cli (CLIError lives in sam3d.errors)")
            elif (target in TOP_LEVEL or other == own or name.endswith(".commands")
                  or other in ALLOWED.get(own, ()) or (name, target) == ("sam3d.__main__", "sam3d.cli")):
                continue
            else:
                bad.append(f"{name} ({own}) imports {target} ({other})")
    return bad


def test_each_package_imports_only_the_layers_below_it():
    assert set(ALLOWED) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}, \
        "a new package needs its row in ALLOWED"
    assert violations() == []


def test_the_layering_check_sees_a_forbidden_import(tmp_path, monkeypatch):
    """The check above can fail: an import from engine into serve is reported."""
    original = imported
    fake = PACKAGE / "engine" / "session.py"
    monkeypatch.setattr(sys.modules[__name__], "imported",
                        lambda path: original(path) | ({"sam3d.serve.app"} if path == fake else set()))
    assert violations() == ["sam3d.engine.session (engine) imports sam3d.serve.app (serve)"]


def test_the_package_uses_relative_imports_only():
    absolute = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in PACKAGE.rglob("*.py")
                for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("sam3d")
                or isinstance(node, ast.Import) and any(a.name.startswith("sam3d") for a in node.names)]
    assert absolute == []


def test_the_client_is_torch_free_and_imports_nothing_of_sam3d():
    code = ("import sys, sam3d.client.client, sam3d.client.wire; "
            "bad = [m for m in ('torch', 'fastapi', 'sam3d.engine', 'sam3d.data') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not (REPO / "scripts" / "sync_client.py").is_file(), reason="needs the source checkout")
def test_the_packages_client_is_the_slicer_modules_client():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "sync_client.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
