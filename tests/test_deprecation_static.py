"""PEP 702: LinearA8W8Quant carries ``__deprecated__`` and mypy flags its call sites."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from compat import LinearA8W8Quant, LinearQuant

SAMPLE = ROOT / "tests" / "data" / "mypy_sample_legacy.py"


def test_runtime_marker_without_a_second_runtime_warning() -> None:
    assert LinearA8W8Quant.__deprecated__.startswith(
        "LinearA8W8Quant is deprecated; use LinearQuant"
    )
    assert not hasattr(LinearQuant, "__deprecated__")
    # category=None: typing_extensions adds no warning of its own (only ours is emitted)
    with pytest.warns(FutureWarning) as record:
        LinearA8W8Quant(4, 4)
    assert [type(w.message).__name__ for w in record] == ["LinearA8W8QuantDeprecationWarning"]


@pytest.mark.slow
def test_mypy_flags_the_legacy_call_site(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--enable-error-code",
            "deprecated",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports",
            "silent",
            "--ignore-missing-imports",
            "--python-version",
            "3.10",
            str(SAMPLE),
        ],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if "error:" in line]
    sample = str(SAMPLE.relative_to(ROOT))
    assert lines, done.stdout + done.stderr
    assert all(line.endswith("[deprecated]") for line in lines), lines
    # line 4: the from-import (mypy then stays quiet about that name, line 8);
    # line 6: the call through the module; line 7 (LinearQuant) is not deprecated.
    assert sorted(int(line.split(":")[1]) for line in lines) == [4, 6], lines
    for line in lines:
        assert line.startswith(sample)
        assert "class compat.nn.linear_a8w8_quant.LinearA8W8Quant is deprecated" in line
        assert "use LinearQuant" in line
