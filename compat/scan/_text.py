"""Source text helpers: AST positions to string offsets, tokens of a span, text edits."""

from __future__ import annotations

import ast
import bisect
import io
import re
import symtable
import tokenize
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_NEWLINE = re.compile(r"\r\n|\r|\n")
_SKIP_TOKENS = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER})


# The name the compiler gets for the text: never a file. On a syntax error CPython reads
# the offending line back from the file of that name, decoded as UTF-8, to turn the
# error's byte offset into a column; for a latin-1 or BOM file, or a text that is not
# what is on disk (a fix being checked), that gives a wrong column. A name that is no
# file makes it take the line from the text itself.
_COMPILE_NAME = ""


@contextmanager
def _quiet_compile(filename: str) -> Iterator[None]:
    """Keep warnings about the source quiet; name *filename* in a ``SyntaxError``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escapes and the like (errors under -W error)
        try:
            yield
        except SyntaxError as exc:
            exc.filename = filename
            raise


def parse_module(text: str, filename: str = "<string>") -> ast.Module:
    """Parse *text*, keeping SyntaxWarning/DeprecationWarning about its contents quiet.

    A ``SyntaxError`` names *filename*; its column counts characters of *text*.
    """
    with _quiet_compile(filename):
        return ast.parse(text, _COMPILE_NAME)


def check_module(text: str, filename: str = "<string>") -> None:
    """Raise what :func:`parse_module` raises for *text*, without building its syntax tree.

    Runs the compiler's symbol-table pass (:func:`symtable.symtable`). It starts with the
    parser that :func:`ast.parse` uses, so it raises the same ``SyntaxError`` (type,
    message, line, column) for every parser error, and it is faster because it makes no
    Python objects for the tree. It also raises the errors found while binding names,
    which ``ast.parse`` lets through but which stop the module from being imported:
    ``nonlocal`` at module level, a duplicate argument name, ``import *`` in a function,
    a name assigned before its ``global`` declaration, an unknown ``__future__`` feature,
    and the like. Errors that only the bytecode compiler finds (``return`` outside a
    function, ``break`` outside a loop, ...) are not raised, as by ``ast.parse``.
    """
    with _quiet_compile(filename):
        symtable.symtable(text, _COMPILE_NAME, "exec")


class FixError(Exception):
    """Raised when a planned edit cannot be located in the source text."""


@dataclass(frozen=True)
class Token:
    """A significant token with absolute string offsets."""

    type: int
    string: str
    start: int
    end: int


@dataclass(frozen=True)
class Edit:
    """Replace ``text[start:end]`` with ``new`` (an insertion when start == end)."""

    start: int
    end: int
    new: str


class SourceText:
    """A module's text with conversions from AST (line, UTF-8 byte column) positions."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0, *(m.end() for m in _NEWLINE.finditer(text))]

    def line(self, lineno: int) -> str:
        """Text of physical line *lineno* (1-based), without its line break."""
        start = self.line_starts[lineno - 1]
        end = self.line_starts[lineno] if lineno < len(self.line_starts) else len(self.text)
        return self.text[start:end].rstrip("\r\n")

    def offset(self, lineno: int, col: int) -> int:
        """String offset of AST position (*lineno*, byte column *col*)."""
        line = self.line(lineno)
        if not line.isascii():
            col = len(line.encode("utf-8")[:col].decode("utf-8", errors="replace"))
        return self.line_starts[lineno - 1] + col

    def column(self, lineno: int, col: int) -> int:
        """1-based character column of AST position (*lineno*, byte column *col*)."""
        return self.offset(lineno, col) - self.line_starts[lineno - 1] + 1

    def start(self, node: ast.AST) -> int:
        """String offset where *node* starts."""
        return self.offset(getattr(node, "lineno"), getattr(node, "col_offset"))  # noqa: B009

    def end(self, node: ast.AST) -> int:
        """String offset just after *node*."""
        lineno: int = getattr(node, "end_lineno")  # noqa: B009
        col: int = getattr(node, "end_col_offset")  # noqa: B009
        return self.offset(lineno, col)

    def line_start(self, offset: int) -> int:
        """Offset of the start of the line holding *offset*."""
        return self.line_starts[bisect.bisect_right(self.line_starts, offset) - 1]

    def indent_at(self, offset: int) -> str:
        """Leading whitespace of the line holding *offset*."""
        start = self.line_start(offset)
        stop = start
        while stop < len(self.text) and self.text[stop] in " \t\f":
            stop += 1
        return self.text[start:stop]

    def newline(self) -> str:
        """The line break this file uses (the first one found, else ``\\n``)."""
        match = _NEWLINE.search(self.text)
        return match.group() if match else "\n"

    def tokens(self, start: int, end: int) -> list[Token]:
        """Significant tokens (no comments or line breaks) of ``text[start:end]``."""
        segment = self.text[start:end]
        starts = [0, *(m.end() for m in _NEWLINE.finditer(segment))]
        result: list[Token] = []
        try:
            for tok in tokenize.generate_tokens(io.StringIO(segment).readline):
                if tok.type in _SKIP_TOKENS or tok.type in (tokenize.INDENT, tokenize.DEDENT):
                    continue
                begin = start + starts[tok.start[0] - 1] + tok.start[1]
                finish = start + starts[tok.end[0] - 1] + tok.end[1]
                result.append(Token(tok.type, tok.string, begin, finish))
        except (tokenize.TokenError, SyntaxError, IndexError) as exc:
            raise FixError(f"cannot tokenize source span: {exc}") from exc
        return result


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply non-overlapping *edits* to *text* (insertions at one point keep their order)."""
    ordered = sorted(enumerate(edits), key=lambda item: (item[1].start, item[1].end, item[0]))
    pieces: list[str] = []
    position = 0
    for _, edit in ordered:
        if edit.start < position:
            raise FixError("overlapping edits")
        pieces.append(text[position : edit.start])
        pieces.append(edit.new)
        position = edit.end
    pieces.append(text[position:])
    return "".join(pieces)
