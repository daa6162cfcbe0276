"""Removal gate: the LinearA8W8Quant shim must not outlive its announced removal version.

When this fails, the release being prepared is the one that promised to drop
LinearA8W8Quant: delete compat/nn/linear_a8w8_quant.py, compat/_legacy_imports.py, the
.pth start-up hook and compat/pytest_plugin.py (or keep the plugin reporting zero sites),
or postpone the removal by raising REMOVAL_VERSION in compat/_deprecation.py together
with docs/migration.md and a CHANGELOG entry that says so.
"""

from __future__ import annotations

import pytest
from conftest import ROOT
from packaging.version import Version

from compat import __version__
from compat._deprecation import REMOVAL_VERSION


def check_gate(version: str, removal: str) -> None:
    if Version(version) >= Version(removal):
        raise AssertionError(
            f"linear-quant-compat {version} has reached {removal}, the announced removal "
            f"version of LinearA8W8Quant: remove the shim or postpone (see {__file__})"
        )


def test_the_shim_is_gone_by_the_announced_version() -> None:
    check_gate(__version__, REMOVAL_VERSION)


@pytest.mark.parametrize(
    ("version", "fails"),
    [("0.9.9", False), ("1.0.0rc1", False), ("1.0.0", True), ("1.0.1", True), ("2.0", True)],
)
def test_the_gate_closes_at_the_removal_version(version: str, fails: bool) -> None:
    if fails:
        with pytest.raises(AssertionError, match="announced removal version"):
            check_gate(version, "1.0.0")
    else:
        check_gate(version, "1.0.0")


def test_the_removal_version_is_the_one_the_docs_announce() -> None:
    migration = (ROOT / "docs" / "migration.md").read_text()
    assert f"linear-quant-compat {REMOVAL_VERSION}" in migration
    assert Version(REMOVAL_VERSION) > Version(__version__)
