"""The benchmark script runs, and its corpus is scanned the same with and without skipping."""

from __future__ import annotations

import ast
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from compat.scan._text import SourceText
from compat.scan.finder import find

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_scan.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scan", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its worker function is pickled by module name
    spec.loader.exec_module(module)
    return module


def test_bench_runs_on_a_small_corpus(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load()
    assert bench.main(["--lines", "3000", "--repeat", "1", "--jobs", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "lines/s" in out and "jobs=2" in out
    assert "ratio scan/ast.parse" in out and out.startswith("cpu: ")


@pytest.mark.parametrize("legacy", [0, 1, 2])
def test_generated_modules_scan_the_same_with_skipping(legacy: int) -> None:
    bench = _load()
    text = bench.make_module(random.Random(legacy), legacy, legacy)
    tree = ast.parse(text)
    fast = find(tree, SourceText(text)).sites
    slow = find(tree).sites
    assert len(slow) > 1
    assert [(s.kind, s.message) for s in fast] == [(s.kind, s.message) for s in slow]
