"""Source text helpers: AST positions to string offsets, tokens of a span, text edits."""

from __future__ import annotations

import ast
import bisect
import io
import re
import tokenize
import warnings
from dataclasses import dataclass

_NEWLINE = re.compile(r"\r\n|\r|\n")
_SKIP_TOKENS = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER})


def parse_module(text: str, filename: str = "<string>") -> ast.Module:
    """Parse *text*, keeping SyntaxWarning/DeprecationWarning about its contents quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(text, filename)


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
