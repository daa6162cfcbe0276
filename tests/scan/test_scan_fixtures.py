"""Fixture triples: legacy source -> expected findings -> expected fixed source.

Each ``fixtures/NAME.in`` has ``NAME.findings`` (one ``LINE:COL CODE KIND SYMBOL
fixable|unfixable`` line per finding, written by hand), ``NAME.out`` (the source after
``--fix``) and, when something cannot be fixed, ``NAME.remaining`` (the findings left in
the fixed source, same format).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from compat.scan import Finding, fix_source, scan_text
from compat.scan._text import SourceText
from compat.scan.finder import find
from compat.scan.fixer import Outcome, plan

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.in"))


def _read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")


def _compact(findings: list[Finding]) -> list[str]:
    return [
        f"{f.line}:{f.column} {f.code} {f.kind} {f.symbol} "
        + ("fixable" if f.fixable else "unfixable")
        for f in findings
    ]


def _expected(path: Path) -> list[str]:
    return _read(path).splitlines() if path.exists() else []


def test_fixture_set_is_complete() -> None:
    assert len(NAMES) >= 20
    for name in NAMES:
        assert (FIXTURES / f"{name}.findings").exists(), name
        assert (FIXTURES / f"{name}.out").exists(), name


@pytest.mark.parametrize("name", NAMES)
def test_findings(name: str) -> None:
    source = _read(FIXTURES / f"{name}.in")
    findings = scan_text(source, f"{name}.py")
    assert _compact(findings) == _expected(FIXTURES / f"{name}.findings")
    assert all(f.path == f"{name}.py" for f in findings)


@pytest.mark.parametrize("name", NAMES)
def test_fix(name: str) -> None:
    source = _read(FIXTURES / f"{name}.in")
    expected = _read(FIXTURES / f"{name}.out")
    fixed, remaining, count = fix_source(source, f"{name}.py")
    assert fixed == expected
    ast.parse(fixed)
    assert _compact(remaining) == _expected(FIXTURES / f"{name}.remaining")
    assert all(not f.fixable for f in remaining)
    findings = _expected(FIXTURES / f"{name}.findings")
    assert count == sum(1 for line in findings if line.endswith(" fixable"))


@pytest.mark.parametrize("name", NAMES)
def test_fix_is_idempotent(name: str) -> None:
    once = _read(FIXTURES / f"{name}.out")
    twice, remaining, count = fix_source(once, f"{name}.py")
    assert twice == once
    assert count == 0
    assert _compact(remaining) == _expected(FIXTURES / f"{name}.remaining")


@pytest.mark.parametrize("name", NAMES)
def test_block_skipping_changes_nothing(name: str) -> None:
    """Skipping blocks that mention no relevant name is an optimisation only."""
    for suffix in (".in", ".out"):
        text = _read(FIXTURES / f"{name}{suffix}")
        tree = ast.parse(text)
        source = SourceText(text)
        fast = plan(source, tree, find(tree, source))
        slow = plan(source, tree, find(tree))
        assert [_outcome(o) for o in fast.outcomes] == [_outcome(o) for o in slow.outcomes]
        assert fast.edits == slow.edits


def _outcome(outcome: Outcome) -> tuple[object, ...]:
    site = outcome.site
    lineno = getattr(site.node, "lineno", 0)
    return site.kind, lineno, site.symbol, site.message, outcome.fixable, outcome.reason
