"""Which files to scan: walk directories, apply ``.gitignore``-style exclude patterns.

Patterns are matched against paths relative to the current directory, with ``/``
separators (paths outside it are matched as given). As in ``.gitignore``: a pattern
without a ``/`` (other than a trailing one) matches a file or directory name at any
depth; one with a ``/`` is anchored; a trailing ``/`` matches directories only; ``*``,
``?`` and ``[...]`` do not cross ``/``; ``**`` does; ``!`` re-includes; later patterns
win; blank lines and ``#`` comments are ignored; nothing below an excluded directory
is scanned.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

SOURCE_SUFFIXES = (".py", ".pyi")
DEFAULT_EXCLUDES = (
    ".git/",
    ".hg/",
    ".svn/",
    ".bzr/",
    "__pycache__/",
    ".tox/",
    ".nox/",
    ".venv/",
    "venv/",
    ".eggs/",
    "*.egg-info/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
)


@dataclass(frozen=True)
class _Pattern:
    regex: re.Pattern[str]
    dir_only: bool
    negate: bool


def _translate(glob: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 1
        elif char == "[" and "]" in glob[i + 2 :]:
            close = glob.index("]", i + 2)
            content = glob[i + 1 : close].replace("\\", "\\\\")
            if content.startswith("!"):
                content = "^" + content[1:]
            out.append(f"[{content}]")
            i = close
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def compile_pattern(pattern: str) -> _Pattern | None:
    """One exclude pattern (None for blank lines and comments)."""
    text = pattern.rstrip()
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    anchored = "/" in text
    text = text.lstrip("/")
    body = _translate(text)
    regex = re.compile(f"^{body}$" if anchored else f"^(?:.*/)?{body}$")
    return _Pattern(regex, dir_only, negate)


class Excludes:
    """An ordered list of exclude patterns."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self._patterns = [p for p in map(compile_pattern, patterns) if p is not None]

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def matches(self, relpath: str, is_dir: bool) -> bool:
        """Whether *relpath* itself is excluded (its parents are not looked at)."""
        result = False
        for pattern in self._patterns:
            if pattern.dir_only and not is_dir:
                continue
            if pattern.regex.match(relpath):
                result = not pattern.negate
        return result

    def excludes(self, relpath: str, is_dir: bool) -> bool:
        """Whether *relpath* or one of the directories above it is excluded."""
        parts = relpath.split("/")
        for depth in range(1, len(parts)):
            if self.matches("/".join(parts[:depth]), True):
                return True
        return self.matches(relpath, is_dir)


def relative(path: str) -> str:
    """*path* relative to the current directory with ``/`` separators (if inside it)."""
    absolute = os.path.abspath(path)
    rel = os.path.relpath(absolute, os.getcwd()) if os.path.isabs(absolute) else path
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        rel = absolute.lstrip(os.sep)
    return rel.replace(os.sep, "/")


def discover(
    paths: Iterable[str], excludes: Excludes, *, default_excludes: bool = True
) -> tuple[list[str], list[str]]:
    """Files to scan below *paths*, and the paths that do not exist.

    Files named directly are scanned whatever their suffix; in directories only
    ``*.py`` and ``*.pyi`` are. *excludes* applies to both; the default excludes
    (VCS, cache and virtual-environment directories) only to what the walk finds.
    """
    defaults = Excludes(DEFAULT_EXCLUDES if default_excludes else ())
    files: list[str] = []
    missing: list[str] = []
    seen: set[str] = set()

    def add(path: str) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            files.append(path)

    for given in paths:
        if not os.path.exists(given):
            missing.append(given)
            continue
        is_dir = os.path.isdir(given)
        if excludes.excludes(relative(given), is_dir):
            continue
        if not is_dir:
            add(given)
            continue
        for root, dirnames, filenames in os.walk(given):
            kept = []
            for name in sorted(dirnames):
                rel = relative(os.path.join(root, name))
                if not defaults.matches(name, True) and not excludes.matches(rel, True):
                    kept.append(name)
            dirnames[:] = kept
            for name in sorted(filenames):
                if not name.endswith(SOURCE_SUFFIXES):
                    continue
                path = os.path.normpath(os.path.join(root, name))
                if not excludes.matches(relative(path), False):
                    add(path)
    return files, missing
