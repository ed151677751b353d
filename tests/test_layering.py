"""The dependency direction, checked over every module (docs/architecture.md, "Layers"):
``passes`` imports neither ``compiler`` nor ``matting``; ``matting`` never imports ``compiler``;
only ``compiler/cli.py`` (and the commands themselves) import ``compiler.commands``.
Benchmarks and tests may import everything."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("passes", "matting", "compiler")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in module ``name`` names, relative ones
    resolved, wherever it stands (in a function too: a lazy import is still a dependency)."""
    tree = ast.parse(source)
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def modules():
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


RULES = [  # (the importing modules, the package they must not import)
    ("passes", "compiler"),
    ("passes", "matting"),
    ("matting", "compiler"),
]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_respects_the_layers(path):
    name = module_name(path)
    imports = imported_modules(path.read_text(), name, is_package=path.name == "__init__.py")
    for importer, forbidden in RULES:
        if _is(name, importer):
            bad = sorted(i for i in imports if _is(i, forbidden))
            assert not bad, f"{name} ({importer}) imports {bad}: {importer} must not depend on {forbidden}"
    if not (_is(name, "compiler.commands") or name == "compiler.cli"):
        bad = sorted(i for i in imports if _is(i, "compiler.commands"))
        assert not bad, f"{name} imports {bad}: shared logic belongs outside the CLI's commands"


def test_the_import_reader_sees_relative_lazy_and_aliased_imports():
    # the checker must be able to fail: imports that break the rules, in each spelling
    source = ("import compiler.bench as b\n"
              "def f():\n    from ...compiler import commands\n    from .. import atomic\n"
              "from compiler.commands._common import add_model_arg\n")
    found = imported_modules(source, "matting.data.probe")
    assert {"compiler.bench", "compiler.commands", "matting.atomic", "compiler.commands._common"} <= found
    assert "matting.data.io" in imported_modules("from . import io\n", "matting.data", is_package=True)
    assert module_name(ROOT / "matting" / "data" / "__init__.py") == "matting.data"
