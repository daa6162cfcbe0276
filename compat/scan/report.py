"""Findings and their text and JSON renderings."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from compat.scan.finder import CODES

KINDS = tuple(CODES)  # every kind, in documentation order


@dataclass(frozen=True, order=True)
class Finding:
    """One reported use of the deprecated API, or one file that could not be scanned.

    ``line`` and ``column`` are 1-based; the column counts characters.
    """

    path: str
    line: int
    column: int
    code: str
    kind: str
    symbol: str
    message: str
    fixable: bool

    @property
    def is_error(self) -> bool:
        """True for a file that could not be read or parsed."""
        return self.kind in ("syntax-error", "unreadable")

    def to_dict(self) -> dict[str, object]:
        """The JSON object for this finding (field names are part of the interface)."""
        return asdict(self)

    def to_text(self) -> str:
        """``path:line:col: CODE message``."""
        return f"{self.path}:{self.line}:{self.column}: {self.code} {self.message}"


def error_finding(path: str, kind: str, message: str, line: int = 1, column: int = 1) -> Finding:
    """A finding that says *path* could not be scanned."""
    return Finding(path, max(line, 1), max(column, 1), CODES[kind], kind, "", message, False)


def format_text(findings: Iterable[Finding]) -> str:
    """One ``path:line:col: CODE message`` line per finding."""
    return "".join(f"{finding.to_text()}\n" for finding in findings)


def format_json(findings: Iterable[Finding]) -> str:
    """A JSON list of finding objects."""
    return json.dumps([finding.to_dict() for finding in findings], indent=2) + "\n"
