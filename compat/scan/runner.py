"""Scan, fix or diff files, in parallel worker processes when there is enough work."""

from __future__ import annotations

import codecs
import difflib
import io
import multiprocessing
import os
import sys
import threading
import tokenize
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import repeat
from typing import Literal, TextIO

from compat.scan._symbols import mentions
from compat.scan._text import FixError, SourceText, check_module, parse_module
from compat.scan.finder import CODES
from compat.scan.fixer import Plan, fix_text, plan
from compat.scan.report import Finding, error_finding

Mode = Literal["scan", "fix", "diff"]

# below this much source, starting worker processes costs more than it saves
PARALLEL_MIN_BYTES = 256 * 1024


@dataclass
class FileResult:
    """What happened to one file."""

    path: str
    lines: int = 0
    findings: list[Finding] = field(default_factory=list)  # fix mode: what remains
    fixed: int = 0  # sites fixed (fix mode) or fixable by the diff (diff mode)
    changed: bool = False  # fix mode: the file was rewritten
    diff: str = ""  # diff mode: unified diff of the fix, as text (no BOM)
    diff_bytes: bytes = b""  # the same diff in the file's own encoding, BOM kept


def findings_from(plan_: Plan, source: SourceText, path: str) -> list[Finding]:
    """Turn a fix plan's outcomes into findings."""
    result = []
    for outcome in plan_.outcomes:
        site = outcome.site
        lineno: int = getattr(site.node, "lineno", 1)
        column = source.column(lineno, getattr(site.node, "col_offset", 0))
        suffix = " (fixable)" if outcome.fixable else f" (not fixable: {outcome.reason})"
        result.append(
            Finding(
                path,
                lineno,
                column,
                CODES[site.kind],
                site.kind,
                site.symbol,
                site.message + suffix,
                outcome.fixable,
            )
        )
    return result


def scan_text(text: str, path: str = "<string>", *, check_syntax: bool = True) -> list[Finding]:
    """Findings for the module source *text*, shown as *path*.

    Every text is checked for syntax errors (one LQC901 finding, and nothing else, when
    it has one). Text that does not contain ``LinearA8W8Quant`` cannot hold a use, so it
    only gets the faster check of :func:`~compat.scan._text.check_module`, which finds
    the same errors without building a syntax tree. *check_syntax* is accepted for
    compatibility and changes nothing (it used to turn that check on).
    """
    del check_syntax  # every text is checked now
    mentioned = mentions(text)
    try:
        if mentioned:
            tree = parse_module(text, path)  # parser errors: exactly as check_module
        check_module(text, path)  # and the errors of the symbol-table pass
    except SyntaxError as exc:
        return [_syntax_error(path, exc)]
    except (ValueError, RecursionError, MemoryError) as exc:
        return [error_finding(path, "syntax-error", f"syntax error: {exc}")]
    if not mentioned:
        return []
    source = SourceText(text)
    return findings_from(plan(source, tree), source, path)


def fix_source(text: str, path: str = "<string>") -> tuple[str, list[Finding], int]:
    """Fixed text, the findings that remain in it, and how many sites were fixed."""
    findings = scan_text(text, path)
    if not any(f.fixable for f in findings):
        return text, findings, 0
    new_text, plan_ = fix_text(text, path)
    fixed = sum(1 for outcome in plan_.outcomes if outcome.fixable)
    return new_text, scan_text(new_text, path), fixed


def _syntax_error(path: str, exc: SyntaxError) -> Finding:
    return error_finding(
        path, "syntax-error", f"syntax error: {exc.msg}", exc.lineno or 1, exc.offset or 1
    )


def _read(path: str) -> tuple[str, str] | Finding:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        return error_finding(path, "unreadable", f"cannot read file: {exc.strerror or exc}")
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        return data.decode(encoding), encoding
    except (SyntaxError, UnicodeDecodeError, LookupError) as exc:
        return error_finding(path, "unreadable", f"cannot decode file: {exc}")


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if not text or text.endswith("\n") else 1)


def _diff_lines(path: str, old: str, new: str) -> list[str]:
    """Unified diff lines of *old* -> *new*, the two ``---``/``+++`` header lines first."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), path, path
    )
    out = []
    for line in lines:
        if not line.endswith(("\n", "\r")):
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return out


def _diff(path: str, old: str, new: str) -> str:
    return "".join(_diff_lines(path, old, new))


def _diff_bytes(path: str, old: str, new: str, encoding: str) -> bytes:
    """The diff as ``patch -p0``/``git apply -p0`` expect it for a file in *encoding*.

    Content lines are encoded like the file itself (a UTF-8 BOM stays at the start of
    line 1), the header lines like the file system encodes the path.
    """
    codec = encoding
    if codecs.lookup(encoding).name == "utf-8-sig":  # decoding dropped the BOM: put it back
        codec = "utf-8"
        old, new = "\ufeff" + old, "\ufeff" + new
    lines = _diff_lines(path, old, new)
    head = b"".join(os.fsencode(line) for line in lines[:2])
    return head + "".join(lines[2:]).encode(codec)


def write_diffs(results: Iterable[FileResult], stream: TextIO | None = None) -> None:
    """Write the diffs of *results* to *stream* (default stdout), each in its file's encoding.

    The bytes go to the stream's binary buffer; a stream without one (a StringIO) gets
    the text diffs.
    """
    stream = sys.stdout if stream is None else stream
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        text = "".join(result.diff for result in results)
        stream.write(text if not text or text.endswith("\n") else text + "\n")
        return
    stream.flush()
    last = b""
    for result in results:
        if result.diff_bytes:
            buffer.write(result.diff_bytes)
            last = result.diff_bytes
    if last and not last.endswith(b"\n"):
        buffer.write(b"\n")  # the output ends with a newline (a file with CR-only lines)
    buffer.flush()


def process_file(path: str, mode: Mode, check_syntax: bool = False) -> FileResult:
    """Scan (and fix or diff) one file; *check_syntax* is kept for compatibility (no effect)."""
    read = _read(path)
    if isinstance(read, Finding):
        return FileResult(path, findings=[read])
    text, encoding = read
    result = FileResult(path, lines=_count_lines(text))
    if mode == "scan" or not mentions(text):
        result.findings = scan_text(text, path)
        return result
    try:
        new_text, remaining, fixed = fix_source(text, path)
    except FixError as exc:  # pragma: no cover - defensive: a fixer bug must not eat files
        result.findings = scan_text(text, path)
        result.findings.append(error_finding(path, "unreadable", f"fix failed: {exc}"))
        return result
    if mode == "diff":
        result.findings = scan_text(text, path)
        result.fixed = fixed
        if new_text != text:
            result.diff = _diff(path, text, new_text)
            result.diff_bytes = _diff_bytes(path, text, new_text, encoding)
        return result
    result.findings = remaining
    result.fixed = fixed
    if new_text != text:
        try:
            with open(path, "wb") as handle:
                handle.write(new_text.encode(encoding))
        except OSError as exc:
            result.findings = scan_text(text, path)
            message = f"cannot write file: {exc.strerror or exc}"
            result.findings.append(error_finding(path, "unreadable", message))
            result.fixed = 0
            return result
        result.changed = True
    return result


def _process_chunk(paths: list[str], mode: Mode) -> list[FileResult]:
    return [process_file(path, mode) for path in paths]


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _context() -> multiprocessing.context.BaseContext:
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and _threads() == 1:
        return multiprocessing.get_context("fork")  # cheapest, and safe single-threaded
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def default_jobs() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def process_files(
    paths: Sequence[str],
    mode: Mode = "scan",
    jobs: int | None = None,
    *,
    check_syntax: bool = False,
    min_parallel_bytes: int = PARALLEL_MIN_BYTES,
) -> list[FileResult]:
    """Results for *paths*, in the same order; uses *jobs* worker processes when it pays.

    Every file is checked for syntax errors; only files that mention ``LinearA8W8Quant``
    are parsed into a syntax tree and analysed (see :func:`scan_text`). *check_syntax* is
    kept for compatibility and has no effect.
    """
    jobs = default_jobs() if not jobs else jobs
    if jobs > 1 and len(paths) > 1 and min_parallel_bytes > 0:
        total = 0
        for path in paths:
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
            if total >= min_parallel_bytes:
                break
        if total < min_parallel_bytes:
            jobs = 1
    if jobs <= 1 or len(paths) <= 1:
        return _process_chunk(list(paths), mode)
    # many small chunks keep both workers busy until the end
    count = min(len(paths), jobs * 8)
    chunks = [list(paths[i::count]) for i in range(count)]
    order = {path: index for index, path in enumerate(paths)}
    results: list[FileResult] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=_context()) as pool:
        for chunk_results in pool.map(_process_chunk, chunks, repeat(mode)):
            results.extend(chunk_results)
    results.sort(key=lambda r: order[r.path])
    return results
