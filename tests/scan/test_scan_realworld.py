"""Robustness on real code: standard-library modules with a legacy use appended.

Every syntax form in them must be walked without error, the fix must touch only the
appended lines (plus one ``import torch``), and a second fix must change nothing.
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import pytest

from compat.scan import fix_source, scan_text

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = [
    "argparse.py",
    "ast.py",
    "asyncio/tasks.py",
    "dataclasses.py",
    "difflib.py",
    "email/message.py",
    "enum.py",
    "functools.py",
    "http/client.py",
    "inspect.py",
    "json/decoder.py",
    "logging/__init__.py",
    "pathlib.py",
    "re/_parser.py",
    "statistics.py",
    "tokenize.py",
    "typing.py",
    "unittest/case.py",
    "zipfile.py",
]
LEGACY_TAIL = "\n\nfrom compat import LinearA8W8Quant as _Probe\n_probe = _Probe(1, 2, False)\n"
FIXED_TAIL = (
    "\n\nfrom compat import LinearQuant as _Probe\n"
    "_probe = _Probe(1, 2, bias=False, output_dtype=torch.int8)\n"
)


@pytest.mark.parametrize("relative", MODULES)
def test_stdlib_module_with_appended_use(relative: str) -> None:
    path = STDLIB / relative
    if not path.exists():  # layouts differ between Python versions
        path = STDLIB / relative.replace("re/_parser.py", "sre_parse.py")
    original = path.read_text(encoding="utf-8")
    assert scan_text(original, relative) == []
    legacy = original + LEGACY_TAIL
    assert [f.kind for f in scan_text(legacy, relative)] == ["import", "call"]
    fixed, remaining, count = fix_source(legacy, relative)
    if any(
        isinstance(n, ast.ImportFrom) and n.names[0].name == "*" for n in ast.parse(original).body
    ):
        # a star import may bind `torch`: the call is not fixed, so neither is the import
        assert fixed == legacy and count == 0
        assert [
            f.message.endswith("`import *` may bind the name torch; import torch by hand)")
            for f in remaining
        ] == [False, True]
        return
    assert remaining == [] and count == 2
    assert fixed.count("import torch\n") == 1
    assert fixed.replace("import torch\n", "", 1) == original + FIXED_TAIL
    tree = ast.parse(fixed)
    torch_imports = [
        node
        for node in tree.body
        if isinstance(node, ast.Import) and [a.name for a in node.names] == ["torch"]
    ]
    assert len(torch_imports) == 1
    assert fix_source(fixed, relative) == (fixed, [], 0)
