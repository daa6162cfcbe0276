"""The layout rules of docs/architecture.md, checked on the source: imports flow one way
(cli -> checkpoint -> nn -> formats -> ops), no function-local import inside the layers,
no private name crosses a module boundary, the public API is the export table."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import compat
from compat.checkpoint import files
from compat.formats import rules
from compat.ops import schemes

PACKAGE = Path(compat.__file__).resolve().parent

# layer -> the compat layers it must never import (directly or through a submodule)
LAYERS = ["cli", "checkpoint", "nn", "formats", "ops"]


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(path: Path) -> list[tuple[ast.AST, str, list[str], bool]]:
    """(node, imported module, names, inside a function) for every compat import."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module.startswith("compat"):
                    found.append((child, child.module, [a.name for a in child.names], inside))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("compat"):
                        found.append((child, alias.name, [], inside))
            visit(child, inside)

    visit(tree, False)
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_flow_one_way(module: str, path: Path) -> None:
    mine = _layer(module)
    if mine is None:
        return
    below = LAYERS[LAYERS.index(mine) :]
    for node, target, names, _inside in _imports(path):
        targets = [target] + [f"{target}.{n}" for n in names]
        for t in targets:
            theirs = _layer(t)
            assert theirs is None or theirs in below, (
                f"{module} (layer {mine}) imports {t} (layer {theirs}) at line "
                f"{getattr(node, 'lineno', '?')}: imports must flow cli -> checkpoint -> nn -> "
                "formats -> ops"
            )


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_no_function_local_compat_import_in_the_layers(module: str, path: Path) -> None:
    """Only the torch-free entry points (the CLI, the start-up hook) import lazily, to keep
    start-up cheap; inside ops/formats/nn/checkpoint every import is at the top."""
    if _layer(module) in (None, "cli"):
        return
    local = [(getattr(n, "lineno", 0), t) for n, t, _names, inside in _imports(path) if inside]
    assert not local, f"{module}: function-local imports {local}"


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_no_private_name_crosses_a_module_boundary(module: str, path: Path) -> None:
    """``from compat.x import _y`` is allowed only for a private *module* of compat."""
    for node, target, names, _inside in _imports(path):
        for name in names:
            if not name.startswith("_") or name.startswith("__"):
                continue
            assert importlib.util.find_spec(f"{target}.{name}") is not None, (
                f"{module} line {getattr(node, 'lineno', '?')} imports the private name "
                f"{name} of {target}"
            )


def test_all_is_the_export_table_and_dir_shows_only_it() -> None:
    exports = compat._EXPORTS
    assert compat.__all__ == sorted(["__version__", *exports])
    assert dir(compat) == compat.__all__
    for name in compat.__all__:
        assert getattr(compat, name) is not None, name
    for name, module in exports.items():
        assert getattr(importlib.import_module(module), name) is getattr(compat, name)


def test_types_returned_and_helpers_named_in_messages_are_exported() -> None:
    m = compat.LinearQuant(4, 2)
    report = compat.upgrade_report(m.state_dict())
    assert isinstance(report, compat.UpgradeReport)
    with pytest.warns(compat.LinearA8W8QuantDeprecationWarning):
        legacy = compat.LinearA8W8Quant(4, 2, output_dtype=torch.float16)
    assert compat.replacement_kwargs(legacy)["output_dtype"] == torch.float16


def test_import_compat_imports_no_torch_and_the_type_checking_block_matches() -> None:
    code = "import sys, compat; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    typed = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        for sub in ast.walk(node)
        if isinstance(sub, ast.ImportFrom)
        for alias in sub.names
    }
    assert typed == set(compat._EXPORTS)


def test_legal_dtype_tables_derive_from_the_schemes() -> None:
    weights = tuple(s.storage_dtype for s in schemes.SCHEMES)
    assert rules.LEGAL["weight"] == weights == (torch.int8, torch.int32)
    for name in ("scale", "offset", "bias"):
        union = {d for s in schemes.SCHEMES for r in s.rows.values() for d in r[name] if d}
        assert set(rules.LEGAL[name]) == union, name
    assert schemes.OUTPUT_DTYPES == (torch.int8, torch.float16, torch.bfloat16, torch.int32)
    assert schemes.scheme_of(torch.int32) is schemes.A4W4 and schemes.A4W4.pack == 8


def test_every_file_format_is_registered_once_torch_last() -> None:
    names = [f.name for f in files.REGISTRY]
    assert names == ["dcp", "sharded", "safetensors", "torch"]
    for fmt in files.REGISTRY:
        for method in ("detect", "open", "load", "convert"):
            assert callable(getattr(fmt, method)), (fmt.name, method)
