"""Findings and their renderings: text, JSON, GitHub Actions annotations and SARIF 2.1.0."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from urllib.parse import quote

from compat._version import __version__
from compat.scan.finder import CODES
from compat.upstream import LEGACY_CLASS

KINDS = tuple(CODES)  # every kind, in documentation order
_ERROR_KINDS = ("syntax-error", "unreadable")


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
        return self.kind in _ERROR_KINDS

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


def _escape_data(text: str) -> str:
    # workflow-command rules: the message escapes %, CR and LF
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # property values also escape ':' and ','
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(findings: Iterable[Finding]) -> str:
    """One GitHub Actions ``::warning file=...,line=...,col=...,title=CODE::message`` line each."""
    lines = []
    for f in findings:
        properties = ",".join(
            f"{key}={_escape_property(value)}"
            for key, value in (
                ("file", f.path.replace(os.sep, "/")),
                ("line", str(f.line)),
                ("col", str(f.column)),
                ("title", f"{f.code} {f.kind}"),
            )
        )
        lines.append(f"::warning {properties}::{_escape_data(f'{f.code} {f.message}')}\n")
    return "".join(lines)


#: One line per code, for SARIF's rule descriptions.
RULE_TEXT: dict[str, str] = {
    "import": f"import of the deprecated {LEGACY_CLASS}",
    "call": f"{LEGACY_CLASS}(...) constructs the deprecated class",
    "subclass": f"class derived from the deprecated {LEGACY_CLASS}",
    "isinstance": f"isinstance/issubclass check against the deprecated {LEGACY_CLASS}",
    "alias": f"the deprecated {LEGACY_CLASS} bound to another name",
    "dynamic": f"the deprecated {LEGACY_CLASS} looked up by name at run time",
    "reference": f"other reference to the deprecated {LEGACY_CLASS}",
    "syntax-error": "file does not parse",
    "unreadable": "file cannot be read or decoded",
}

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
DOCS_URI = "https://github.com/linear-quant-compat/linear-quant-compat/tree/main/docs/scan.md"


def format_sarif(findings: Iterable[Finding]) -> str:
    """A SARIF 2.1.0 log: one run, one rule per code, one result per finding."""
    index = {kind: number for number, kind in enumerate(CODES)}
    rules = [
        {
            "id": code,
            "name": kind,
            "shortDescription": {"text": RULE_TEXT[kind]},
            "defaultConfiguration": {"level": "error" if kind in _ERROR_KINDS else "warning"},
        }
        for kind, code in CODES.items()
    ]
    results = [
        {
            "ruleId": f.code,
            "ruleIndex": index[f.kind],
            "level": "error" if f.is_error else "warning",
            "message": {"text": f.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {
                            "uri": quote(f.path.replace(os.sep, "/")),
                            "uriBaseId": "%SRCROOT%",
                        },
                        "region": {"startLine": f.line, "startColumn": f.column},
                    }
                }
            ],
        }
        for f in findings
    ]
    log = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "compat scan",
                        "version": __version__,
                        "informationUri": DOCS_URI,
                        "rules": rules,
                    }
                },
                "columnKind": "unicodeCodePoints",  # columns count characters
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2) + "\n"
