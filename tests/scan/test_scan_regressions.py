"""Regression tests for ``--fix``/``--diff`` defects: the fixed code must actually run.

Each test runs the fixer on a legacy source (a fixture's ``.in`` or a file written here)
and then executes or applies the result, instead of only comparing the emitted text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing
import warnings
from pathlib import Path
from typing import Any

import pytest

import compat
from compat import upstream
from compat.scan import fix_source, scan_text

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "fixtures"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}


def _source(name: str) -> str:
    return (FIXTURES / f"{name}.in").read_bytes().decode("utf-8")


def _exec(source: str, name: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": name}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(source, f"{name}.py", "exec"), namespace)
    return namespace


def _quiet(function: Any, *args: Any) -> Any:
    """Call *function* with the legacy class's deprecation warning silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args)


def _fixed(name: str) -> tuple[str, dict[str, Any]]:
    fixed, _, count = fix_source(_source(name), f"{name}.py")
    assert count > 0
    return fixed, _exec(fixed, f"fixed_{name}")


# -- 1: torch bound only for type checkers, or only after the call ------------------------


def test_type_checking_torch_repro_runs_after_fix(tmp_path: Path) -> None:
    script = tmp_path / "t.py"
    script.write_text(
        "from typing import TYPE_CHECKING\n"
        "from compat import LinearA8W8Quant\n"
        "if TYPE_CHECKING:\n"
        "    import torch\n"
        "layer = LinearA8W8Quant(4, 4)\n"
        "assert type(layer).__name__ == 'LinearQuant', type(layer)\n"
    )
    scan = [sys.executable, "-m", "compat", "scan", "-q", "--jobs", "1"]
    result = subprocess.run(
        [*scan, "--fix", "t.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    run = subprocess.run(
        [sys.executable, "t.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    "guard",
    [
        "if TYPE_CHECKING:\n    import torch\n",
        "if typing.TYPE_CHECKING:\n    import torch\n",
        "if TYPE_CHECKING and sys.version_info >= (3, 8):\n    import torch\n",
        "if not TYPE_CHECKING:\n    pass\nelse:\n    import torch\n",
        "if TYPE_CHECKING:\n    import torch as th\n",
    ],
)
def test_type_checking_import_of_torch_does_not_count(guard: str) -> None:
    source = (
        "import sys\nimport typing\nfrom typing import TYPE_CHECKING\n"
        f"from compat import LinearA8W8Quant\n{guard}"
        "layer = LinearA8W8Quant(4, 4, False)\n"
    )
    fixed, remaining, count = fix_source(source, "case.py")
    assert remaining == [] and count == 2
    namespace = _exec(fixed, "case")  # NameError when torch.int8 names an unbound torch
    assert type(namespace["layer"]) is compat.LinearQuant
    assert namespace["layer"].output_dtype is namespace["torch"].int8


@pytest.mark.parametrize("name", ["torch_type_checking", "torch_late_import"])
def test_fix_adds_a_torch_import_that_exists_at_run_time(name: str) -> None:
    _, namespace = _fixed(name)  # raised NameError: torch.int8 without a torch binding
    assert type(namespace["layer"]) is compat.LinearQuant
    assert namespace["layer"].output_dtype is namespace["torch"].int8
    made = _quiet(namespace["make"])
    assert type(made) is compat.LinearQuant and made.output_dtype is namespace["torch"].int8


def test_unbound_torch_in_function_is_not_fixable_and_still_runs() -> None:
    source = _source("torch_unbound")
    findings = scan_text(source, "torch_unbound.py")
    assert [f.fixable for f in findings] == [False, False, False]
    assert "only under `if TYPE_CHECKING:`" in findings[1].message
    assert "only after this call (line 14)" in findings[2].message
    fixed, _, count = fix_source(source, "torch_unbound.py")
    assert fixed == source and count == 0
    namespace = _exec(fixed, "torch_unbound")
    assert isinstance(_quiet(namespace["checked"]), compat.LinearA8W8Quant)
    assert isinstance(_quiet(namespace["late"])[0], compat.LinearA8W8Quant)


# -- 2 and 5: output_dtype expressions, upper-case strings -------------------------------


def test_output_dtype_expressions_run_like_legacy() -> None:
    legacy = _exec(_source("output_dtype_expressions"), "legacy_expressions")
    fixed, namespace = _fixed("output_dtype_expressions")
    assert 'output_dtype=f"int8"' in fixed  # an f-string is not mapped, the call is kept
    torch = namespace["torch"]
    expected = {
        "constant": torch.float16,  # DT = "fp16", followed
        "upper": torch.bfloat16,  # LOUD = "BF16", lowercased like the adapter
        "alias": torch.float16,  # th.half
        "imported": torch.float16,  # from torch import float16 as F16
    }
    for name, dtype in expected.items():
        assert type(namespace[name]) is compat.LinearQuant, name
        assert namespace[name].output_dtype == legacy[name].output_dtype == dtype, name
    assert [type(layer) for layer in namespace["literals"]] == [compat.LinearQuant] * 2
    assert [layer.output_dtype for layer in namespace["literals"]] == [
        layer.output_dtype for layer in legacy["literals"]
    ]
    for name in ("fstring", "lookup"):  # not fixable: still the legacy class, still working
        assert isinstance(namespace[name], compat.LinearA8W8Quant), name
        assert namespace[name].output_dtype == torch.int8
    assert namespace["early"] is None and legacy["early"] is None  # LATE is not bound yet
    later = _quiet(namespace["later"])
    assert type(later) is compat.LinearQuant and later.output_dtype == torch.bfloat16
    made = _quiet(namespace["make"], "fp16")  # a parameter: kept, so legacy strings still work
    assert isinstance(made, compat.LinearA8W8Quant) and made.output_dtype == torch.float16


@pytest.mark.parametrize(
    "expression",
    ['f"fp16"', "DT", "dtypes[0]", '"fp" + "16"', 'getattr(torch, "float16")', "pick()"],
)
def test_non_literal_output_dtype_is_reported_not_passed_on(expression: str) -> None:
    source = (
        "import torch\n"
        "from compat import LinearA8W8Quant\n"
        "DT = 'fp16'\n"
        "DT = 'FP16'\n"  # assigned twice: not followed
        "dtypes = ['fp16']\n"
        "def pick():\n"
        "    return 'half'\n"
        f"layer = LinearA8W8Quant(16, 8, output_dtype={expression})\n"
    )
    findings = scan_text(source, "case.py")
    call = [f for f in findings if f.kind == "call"]
    assert len(call) == 1 and not call[0].fixable
    assert f"output_dtype={expression}" in call[0].message
    assert "its value at run time (maybe a legacy string) cannot be mapped" in call[0].message
    fixed, _, _ = fix_source(source, "case.py")
    assert fixed == source
    namespace = _exec(fixed, "case")
    assert namespace["layer"].output_dtype == namespace["torch"].float16


def test_uppercase_dtype_string_maps_like_the_adapter() -> None:
    from compat.nn.linear_a8w8_quant import legacy_output_dtype

    for text in ("FP16", "Bf16", "INT8", "Half", "BFLOAT16", "Float16"):
        source = f"from compat import LinearA8W8Quant\nlayer = LinearA8W8Quant(2, 2, output_dtype={text!r})\n"
        fixed, remaining, count = fix_source(source, "case.py")
        assert remaining == [] and count == 2, text
        namespace = _exec(fixed, "case")
        assert type(namespace["layer"]) is compat.LinearQuant
        assert namespace["layer"].output_dtype == legacy_output_dtype("X", text), text
    for text in ('"Int32"', '"INT"', "torch.int32", "torch.int"):  # every int32 spelling
        source = f"import torch, compat\ncompat.LinearA8W8Quant(2, 2, output_dtype={text})\n"
        fixed, remaining, count = fix_source(source, "case.py")
        assert fixed == source and count == 0, text
        assert [f.code for f in remaining] == ["LQC002"], text
        assert upstream.INT32_REASON in remaining[0].message, text
        with pytest.raises(ValueError):  # the adapter refuses it too
            _exec(source, "case")


# -- 3: string (forward-reference) annotations -------------------------------------------


def test_string_annotations_are_renamed_with_the_import() -> None:
    fixed, namespace = _fixed("string_annotations")
    # Literal[...] values and Annotated metadata are strings, not names: kept
    assert 'Literal["LinearA8W8Quant"] = "LinearA8W8Quant"' in fixed
    assert 'Annotated["LinearQuant", "LinearA8W8Quant"]' in fixed
    hints = typing.get_type_hints(namespace["first"])
    assert hints["layer"] is compat.LinearQuant
    assert hints["return"] == list[compat.LinearQuant]
    assert hints["other"] == compat.LinearQuant | None
    hints = typing.get_type_hints(namespace["second"], include_extras=True)
    assert hints["layer"] is compat.LinearQuant
    assert hints["return"] == typing.Annotated[compat.LinearQuant, "LinearA8W8Quant"]
    module = type(sys)("fixed_string_annotations")
    module.__dict__.update(namespace)
    assert typing.get_type_hints(module)["current"] == compat.LinearQuant | None


def test_string_annotation_that_cannot_be_rewritten_keeps_the_legacy_import() -> None:
    source = _source("string_annotation_unfixable")
    fixed, remaining, count = fix_source(source, "case.py")
    assert count == 1  # the plain string annotation; the raw one stays
    assert fixed.splitlines()[0] == "from compat import LinearA8W8Quant, LinearQuant"
    assert 'cannot rewrite inside the string annotation r"LinearA8W8Quant"' in (
        remaining[1].message
    )
    namespace = _exec(fixed, "case")
    hints = typing.get_type_hints(namespace["build"])
    assert hints["layer"] is compat.LinearA8W8Quant
    assert hints["return"] is compat.LinearQuant


# -- 4: --diff keeps each file's encoding and BOM ----------------------------------------


LEGACY = (
    "import torch\nfrom compat import LinearA8W8Quant\n\nlayer = LinearA8W8Quant(5, 127, False)\n"
)


def _legacy_files(folder: Path) -> None:
    folder.mkdir()
    bom = b"\xef\xbb\xbf" + LEGACY.replace("\n", "\r\n").encode("utf-8")
    (folder / "bom.py").write_bytes(bom)
    latin = "# -*- coding: latin-1 -*-\n# caf\xe9\n" + LEGACY + "name = 'd\xe9j\xe0'\n"
    (folder / "latin.py").write_bytes(latin.encode("latin-1"))
    (folder / "plain.py").write_bytes(LEGACY.replace("layer =", "layer_\u00e9 =").encode())


@pytest.mark.parametrize("tool", ["patch", "git"])
def test_diff_of_bom_and_latin1_files_applies(tmp_path: Path, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    _legacy_files(tmp_path / "orig")
    scan = [sys.executable, "-m", "compat", "scan", "-q", "--jobs", "1", "."]
    diff = subprocess.run([*scan, "--diff"], cwd=tmp_path / "orig", env=ENV, capture_output=True)
    assert diff.returncode == 1, diff.stderr  # findings (all fixable), nothing written
    assert diff.stderr == b""
    assert b"\xef\xbb\xbfimport torch\r\n" in diff.stdout  # BOM on line 1, bytes as in the file
    assert b"# caf\xe9\n" in diff.stdout  # latin-1 context stays latin-1
    assert b" name = 'd\xe9j\xe0'\n" in diff.stdout
    shutil.copytree(tmp_path / "orig", tmp_path / "fixed")
    shutil.copytree(tmp_path / "orig", tmp_path / "patched")
    fix = subprocess.run([*scan, "--fix"], cwd=tmp_path / "fixed", env=ENV, capture_output=True)
    assert fix.returncode == 0, fix.stderr
    command = ["patch", "-p0"] if tool == "patch" else ["git", "apply", "-p0", "-"]
    applied = subprocess.run(
        command, input=diff.stdout, cwd=tmp_path / "patched", capture_output=True
    )
    assert applied.returncode == 0, applied.stdout + applied.stderr
    for name in ("bom.py", "latin.py", "plain.py"):
        patched = (tmp_path / "patched" / name).read_bytes()
        assert patched == (tmp_path / "fixed" / name).read_bytes(), name
        assert patched != (tmp_path / "orig" / name).read_bytes(), name


# -- 6: match class patterns --------------------------------------------------------------


def test_match_class_pattern_is_an_isinstance_check_and_is_renamed() -> None:
    source = _source("match_class")
    findings = scan_text(source, "match_class.py")
    assert [(f.code, f.fixable) for f in findings] == [("LQC001", True)] + [("LQC004", True)] * 3
    legacy = _exec(source, "legacy_match")
    fixed, namespace = _fixed("match_class")
    assert "LinearA8W8Quant" not in fixed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        old = [compat.LinearA8W8Quant(4, 4), compat.LinearA8W8Quant(2, 2)]
    new = [compat.LinearQuant(4, 4), compat.LinearQuant(2, 2)]
    for describe, layers in ((legacy["describe"], old), (namespace["describe"], new)):
        assert describe(layers[0]) == "four"
        assert describe(layers[1]) == "quantized"
        assert describe([layers[1], 1]) == "list of 2"
        assert describe(object()) == "other"
