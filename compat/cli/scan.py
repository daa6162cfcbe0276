"""``python -m compat scan``: find, and optionally fix, uses of the deprecated LinearA8W8Quant.

Exit codes, as linters have them: 0 nothing found (``--fix``: nothing left), 1 any
finding, syntax errors (LQC901) included (``--fix``: findings that could not be fixed
remain), 2 only for a usage error, a path that does not exist or cannot be read (LQC902),
or an internal error (the other files are still scanned and reported).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from compat.scan import (
    Excludes,
    FileResult,
    Finding,
    discover,
    format_github,
    format_json,
    format_sarif,
    format_text,
    process_files,
)
from compat.scan.runner import Mode, write_diffs

HELP = "statically find (and --fix) uses of the deprecated LinearA8W8Quant; imports nothing"

FORMATS = {
    "text": format_text,
    "json": format_json,
    "github": format_github,
    "sarif": format_sarif,
}

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2

_EPILOG = """\
exit codes: 0 no findings; 1 any finding, syntax errors (LQC901) included (with --fix:
findings that could not be fixed remain); 2 only for a usage error, a path that does not
exist or cannot be read (LQC902), or an internal error.
codes: LQC001 import, LQC002 call, LQC003 subclass, LQC004 isinstance, LQC005 alias,
LQC006 dynamic, LQC007 reference, LQC901 syntax error, LQC902 unreadable file.
"""


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``scan`` arguments to *parser*."""
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="files and directories to scan (*.py, *.pyi)"
    )
    parser.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default="text",
        help="text: 'path:line:col: CODE message' lines (default); json: a list of objects; "
        "github: GitHub Actions ::warning annotations; sarif: a SARIF 2.1.0 log",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--fix",
        action="store_true",
        help="rewrite the files; report only what could not be fixed",
    )
    action.add_argument(
        "--diff",
        action="store_true",
        help="print the fixes as a unified diff on stdout, followed by what they cannot "
        "fix; write nothing",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PATTERN",
        help=".gitignore-style pattern, relative to the current directory (repeatable)",
    )
    parser.add_argument(
        "--exclude-from",
        action="append",
        default=[],
        metavar="FILE",
        help="read exclude patterns from FILE, e.g. .gitignore (repeatable)",
    )
    parser.add_argument(
        "--no-default-excludes",
        action="store_true",
        help="also walk .git, .venv, venv, __pycache__, .tox, build caches and the like",
    )
    parser.add_argument(
        "--check-syntax",
        action="store_true",
        help="no effect, kept for compatibility: every file is checked for syntax errors",
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=0,
        metavar="N",
        help="worker processes (default 0: one per available CPU)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no summary line on stderr")


def _patterns(args: argparse.Namespace) -> list[str] | str:
    patterns: list[str] = []
    for name in args.exclude_from:
        try:
            with open(name, encoding="utf-8") as handle:
                patterns.extend(handle.read().splitlines())
        except OSError as exc:
            return f"cannot read --exclude-from file {name}: {exc.strerror or exc}"
    patterns.extend(args.exclude)
    return patterns


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _summary(results: list[FileResult], findings: list[Finding], args: argparse.Namespace) -> str:
    found = [f for f in findings if not f.is_error]
    errors = len(findings) - len(found)
    lines = sum(r.lines for r in results)
    parts = [f"scanned {_count(len(results), 'file')} ({_count(lines, 'line')})"]
    if args.fix:
        fixed = sum(r.fixed for r in results)
        changed = sum(1 for r in results if r.changed)
        parts.append(f"fixed {_count(fixed, 'use')} in {_count(changed, 'file')}")
        parts.append(f"{len(found)} not fixable")
    else:
        fixable = sum(1 for f in found if f.fixable)
        parts.append(f"{_count(len(found), 'finding')} ({fixable} fixable)")
    if errors:
        parts.append(f"{_count(errors, 'file')} could not be scanned")
    return "compat scan: " + ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    """Run the scan described by *args*; returns the exit code (2 on an internal error)."""
    try:
        return _scan(args)
    except Exception as exc:  # an internal error exits 2, not a traceback's 1 ("findings")
        print(f"compat scan: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _scan(args: argparse.Namespace) -> int:
    patterns = _patterns(args)
    if isinstance(patterns, str):
        print(f"compat scan: error: {patterns}", file=sys.stderr)
        return EXIT_ERROR
    files, missing = discover(
        args.paths, Excludes(patterns), default_excludes=not args.no_default_excludes
    )
    for path in missing:
        print(f"compat scan: error: {path}: no such file or directory", file=sys.stderr)
    mode: Mode = "fix" if args.fix else "diff" if args.diff else "scan"
    started = time.perf_counter()
    results = process_files(files, mode, args.jobs)
    elapsed = time.perf_counter() - started
    findings = sorted(f for result in results for f in result.findings)
    render = FORMATS[args.format]
    if args.diff:
        write_diffs(results)  # bytes, in each file's own encoding, ending with a newline
        sys.stdout.write(render([f for f in findings if not f.fixable]))  # after the diff
    else:
        sys.stdout.write(render(findings))
    if not args.quiet:
        print(f"{_summary(results, findings, args)} in {elapsed:.2f}s", file=sys.stderr)
    return exit_code(findings, missing)


def exit_code(findings: Sequence[Finding], missing: Sequence[str]) -> int:
    """2 for a missing or unreadable path, else 1 for any finding (syntax errors too), else 0."""
    if missing or any(f.kind == "unreadable" for f in findings):
        return EXIT_ERROR
    return EXIT_FINDINGS if findings else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m compat.cli.scan``."""
    parser = argparse.ArgumentParser(prog="python -m compat scan", description=HELP)
    configure(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_ERROR
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
