"""Static finder and fixer for uses of the deprecated ``LinearA8W8Quant``.

Backs ``python -m compat scan`` (see ``docs/scan.md``). Works from the syntax tree
only: it imports neither the scanned code, nor torch, nor torch_npu.

>>> findings = scan_text("from compat import LinearA8W8Quant\\n", "m.py")
>>> [(f.code, f.kind, f.fixable) for f in findings]
[('LQC001', 'import', True)]
"""

from __future__ import annotations

from compat.scan.files import DEFAULT_EXCLUDES, Excludes, discover
from compat.scan.finder import CODES
from compat.scan.report import (
    KINDS,
    Finding,
    format_github,
    format_json,
    format_sarif,
    format_text,
)
from compat.scan.runner import FileResult, fix_source, process_files, scan_text

__all__ = [
    "CODES",
    "DEFAULT_EXCLUDES",
    "KINDS",
    "Excludes",
    "FileResult",
    "Finding",
    "discover",
    "fix_source",
    "format_github",
    "format_json",
    "format_sarif",
    "format_text",
    "process_files",
    "scan_text",
]
