"""Syntax errors are reported for every scanned file, found the same way whichever path.

Files that mention ``LinearA8W8Quant`` are parsed with :func:`ast.parse`; the others only
get the faster :func:`compat.scan._text.check_module` (the compiler's symbol-table pass).
Both must give the same report: LQC901 at the parser's line and column, with its message.
"""

from __future__ import annotations

import ast
import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from compat.cli.scan import main
from compat.scan import Finding, fix_source, process_files, runner, scan_text
from compat.scan._text import check_module, parse_module

LEGACY = "from compat import LinearA8W8Quant\n\nlayer = LinearA8W8Quant(4, 8, True)\n"
# does not mention the class; '[' on line 5, column 12 is never closed
BROKEN = """\
import os


def helper(values):
    return [v for v in values if v > 0


print(helper([1]))
"""

# errors of Python's parser (tokenizer and grammar): ast.parse reports them
PARSER_ERRORS = {
    "unclosed paren": "x = (1,\ny = 2\n",
    "unclosed bracket at eof": "values = [1, 2\n",
    "unmatched close": "x = 1)\n",
    "mismatched brackets": "x = (1]\n",
    "missing indented block": "def f():\nreturn 1\n",
    "unexpected indent": "x = 1\n    y = 2\n",
    "unindent mismatch": "if x:\n        a = 1\n    b = 2\n",
    "tabs and spaces": "if x:\n\tif y:\n        pass\n",
    "too many indentation levels": "".join(" " * i + "if x:\n" for i in range(101)) + "x\n",
    "invalid token": "x = $\n",
    "invalid character": "x = 1 \u20ac 2\n",
    "invalid decimal literal": "x = 1abc\n",
    "trailing underscore": "x = 1_\n",
    "leading zeros": "x = 012\n",
    "unterminated string": "x = 'abc\n",
    "unterminated triple-quoted string": "x = '''abc\n\ny = 1\n",
    "f-string empty expression": "f'{}'\n",
    "f-string unclosed brace": "f'{x'\n",
    "f-string single closing brace": "f'}'\n",
    "f-string invalid expression": "f'{a b}'\n",
    "f-string nested error": "x = f'{ {1: 2]} }'\n",
    "missing colon": "if x\n    pass\n",
    "print statement": "print 'x'\n",
    "assign to literal": "1 = x\n",
    "assign to call": "f() = 1\n",
    "delete literal": "del 1\n",
    "augmented assign to tuple": "a, b += 1\n",
    "positional after keyword": "f(a=1, 2)\n",
    "non-default after default": "def f(a=1, b):\n    pass\n",
    "walrus statement": "x := 1\n",
    "except and except*": "try:\n    pass\nexcept* A:\n    pass\nexcept B:\n    pass\n",
    "bad match pattern": "match x:\n    case 1 +:\n        pass\n",
    "too many nested parentheses": "x = " + "(" * 201 + ")" * 201 + "\n",
    "line continuation at eof": "x = 1 + \\\n",
    "character after line continuation": "x = 1 \\ 2\n",
    "null byte": "x = 1\x00\n",
    "error after non-ascii text": "name = 'caf\xe9'; y = (1 +\n",
    "column counted in characters": "s = '\u00e9\u00e9\u00e9' $\n",
    "crlf line endings": "x = 1\r\ny = 2 +\r\n",
    "cr line endings": "x = 1\ry = )\r",
    "deep in a file": "def f():\n    if x:\n        return [\n            1,\n            2 3,\n        ]\n",
}

# errors of the symbol-table pass: ast.parse lets them through, but import fails
SYMTABLE_ERRORS = {
    "nonlocal at module level": "nonlocal x\n",
    "assigned before global": "def f():\n    x = 1\n    global x\n",
    "used before nonlocal": "def f():\n    x = 1\n    def g():\n        print(x)\n        nonlocal x\n",
    "duplicate argument": "def f(a, b, a):\n    pass\n",
    "duplicate lambda argument": "g = lambda a, a: a\n",
    "import star in function": "def f():\n    from os import *\n",
    "unknown future feature": "from __future__ import nope\n",
    "future braces": "from __future__ import braces\n",
    "walrus rebinds comprehension variable": "[i := 0 for i in range(3)]\n",
    "yield in comprehension": "def f(y):\n    return [(yield x) for x in y]\n",
    "no binding for nonlocal": "def f():\n    nonlocal x\n",
    "parameter and global": "def f(a):\n    global a\n",
    "annotated global": "def f():\n    global x\n    x: int = 1\n",
}

# found only when generating bytecode: neither ast.parse nor the scanner reports them
COMPILER_ONLY = {
    "return outside function": "return 1\n",
    "yield outside function": "yield 1\n",
    "await outside function": "await x\n",
    "break outside loop": "break\n",
    "continue outside loop": "continue\n",
    "late future import": "x = 1\nfrom __future__ import annotations\n",
    "repeated keyword argument": "f(a=1, a=2)\n",
    "starred expression alone": "*a\n",
}

VALID = {
    "plain module": "import os\n\n\ndef f(x):\n    return os.path.join(x, 'y')\n",
    "invalid escape (a warning, not an error)": "x = '\\d'\n",
    "latin-1 text with a cookie": "# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n",
    "nonlocal in a nested function": "def f():\n    x = 1\n    def g():\n        nonlocal x\n",
    "match statement": "match x:\n    case [1, *rest]:\n        pass\n",
}

Outcome = tuple[object, ...] | None


def _outcome(check: Callable[[str, str], object], text: str) -> Outcome:
    try:
        check(text, "m.py")
    except SyntaxError as exc:
        return (type(exc), exc.msg, exc.lineno, exc.offset)
    except (ValueError, RecursionError, MemoryError) as exc:
        return (type(exc), str(exc))
    return None


def _lqc901(error: SyntaxError | ValueError) -> list[Finding]:
    """The report expected for *error* in ``m.py``."""
    if isinstance(error, SyntaxError):
        line, column, message = error.lineno or 1, error.offset or 1, error.msg
    else:  # null bytes on Python 3.10
        line, column, message = 1, 1, str(error)
    message = f"syntax error: {message}"
    return [Finding("m.py", line, column, "LQC901", "syntax-error", "", message, False)]


def _report(text: str) -> list[Finding]:
    """The report from the full parse (ast.parse: the path of files naming the class)."""
    try:
        parse_module(text, "m.py")
    except (SyntaxError, ValueError) as exc:
        return _lqc901(exc)
    return []


def _full_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make scan_text treat every text as one that names the class (the ast.parse path)."""
    monkeypatch.setattr(runner, "mentions", lambda text: True)


def _ast_parse(text: str, filename: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ast.parse(text, filename)


@pytest.mark.parametrize("text", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
def test_fast_check_raises_what_ast_parse_raises(text: str) -> None:
    expected = _outcome(_ast_parse, text)  # plain ast.parse, "m.py" being no file here
    assert expected is not None
    assert _outcome(check_module, text) == expected
    assert _outcome(parse_module, text) == expected


@pytest.mark.parametrize("text", PARSER_ERRORS.values(), ids=PARSER_ERRORS.keys())
def test_parser_errors_are_reported_the_same_either_way(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _report(text)
    assert len(expected) == 1
    assert scan_text(text, "m.py") == expected  # fast check (the text does not name the class)
    _full_parse(monkeypatch)
    assert scan_text(text, "m.py") == expected


@pytest.mark.parametrize("text", SYMTABLE_ERRORS.values(), ids=SYMTABLE_ERRORS.keys())
def test_symbol_table_errors_are_reported_either_way(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parse_module(text, "m.py")  # ast.parse accepts these ...
    with pytest.raises(SyntaxError) as compiled:  # ... but the module cannot be imported
        compile(text, "m.py", "exec", dont_inherit=True)
    error = compiled.value
    assert _outcome(check_module, text) == (type(error), error.msg, error.lineno, error.offset)
    expected = _lqc901(error)
    assert scan_text(text, "m.py") == expected
    _full_parse(monkeypatch)
    assert scan_text(text, "m.py") == expected


@pytest.mark.parametrize("text", COMPILER_ONLY.values(), ids=COMPILER_ONLY.keys())
def test_bytecode_compiler_errors_are_not_reported(text: str) -> None:
    with pytest.raises(SyntaxError):
        compile(text, "m.py", "exec", dont_inherit=True)
    assert _outcome(parse_module, text) is None  # ast.parse does not report them either
    assert _outcome(check_module, text) is None
    assert scan_text(text, "m.py") == []


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_valid_modules_pass_quietly(text: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a SyntaxWarning/DeprecationWarning would raise
        assert _outcome(check_module, text) is None
        assert scan_text(text, "m.py") == []


def test_file_naming_the_class_with_a_symbol_table_error(tmp_path: Path) -> None:
    text = LEGACY + "\n\ndef build(a, a):\n    return LinearA8W8Quant(a, a)\n"
    expected = "m.py:6:14: LQC901 syntax error: duplicate argument 'a' in function definition"
    assert [f.to_text() for f in scan_text(text, "m.py")] == [expected]
    assert fix_source(text, "m.py")[0] == text  # a file that cannot be imported is not fixed
    (tmp_path / "m.py").write_text(text)
    (result,) = process_files([str(tmp_path / "m.py")], "fix", jobs=1)
    assert not result.changed and (tmp_path / "m.py").read_text() == text


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``pkg/`` with a legacy use, a syntax error (no use) and a clean module."""
    (tmp_path / "pkg").mkdir()
    for name, text in {"legacy.py": LEGACY, "broken.py": BROKEN, "clean.py": "import os\n"}.items():
        (tmp_path / "pkg" / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_syntax_error_in_a_file_without_the_class_is_reported_by_default(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pkg", "-q"]) == 1  # syntax errors are findings: exit 1, as ruff/flake8
    assert capsys.readouterr().out.splitlines() == [
        "pkg/broken.py:5:12: LQC901 syntax error: '[' was never closed",
        "pkg/legacy.py:1:20: LQC001 import of deprecated compat.LinearA8W8Quant;"
        " import LinearQuant instead (fixable)",
        "pkg/legacy.py:3:9: LQC002 LinearA8W8Quant(...) constructs deprecated"
        " compat.LinearA8W8Quant; use LinearQuant (fixable)",
    ]
    assert main(["pkg/broken.py", "pkg/clean.py", "-q", "--format", "json"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {
            "path": "pkg/broken.py",
            "line": 5,
            "column": 12,
            "code": "LQC901",
            "kind": "syntax-error",
            "symbol": "",
            "message": "syntax error: '[' was never closed",
            "fixable": False,
        }
    ]
    with pytest.raises(SyntaxError) as parsed:  # the position ast.parse gives
        ast.parse(BROKEN)
    assert (parsed.value.lineno, parsed.value.offset) == (5, 12)


def test_fix_and_diff_report_the_error_and_still_fix_the_rest(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pkg", "-q", "--diff"]) == 1
    captured = capsys.readouterr()
    assert "+layer = LinearQuant(4, 8, bias=True, output_dtype=torch.int8)" in captured.out
    assert "pkg/broken.py:5:12: LQC901" in captured.out
    assert main(["pkg", "-q", "--fix"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "pkg/broken.py:5:12: LQC901 syntax error: '[' was never closed"
    ]
    assert "LinearQuant(4, 8, bias=True" in (tree / "pkg" / "legacy.py").read_text()
    assert (tree / "pkg" / "broken.py").read_text() == BROKEN


def test_check_syntax_flag_is_accepted_and_changes_nothing(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pkg", "-q"]) == 1
    default = capsys.readouterr().out
    assert main(["pkg", "-q", "--check-syntax"]) == 1
    assert capsys.readouterr().out == default
    assert main(["pkg", "-q", "--exclude", "broken.py"]) == 1
    assert main(["pkg/clean.py", "-q", "--check-syntax"]) == 0


def test_serial_and_parallel_report_the_same_errors(tree: Path) -> None:
    for index in range(12):
        text = [LEGACY, BROKEN, "def f(a, a):\n    pass\n", "import os\n"][index % 4]
        (tree / "pkg" / f"m{index}.py").write_text(text)
    files = sorted(str(p.relative_to(tree)) for p in (tree / "pkg").glob("*.py"))
    serial = process_files(files, "scan", jobs=1)
    parallel = process_files(files, "scan", jobs=2, min_parallel_bytes=0)
    assert [r.findings for r in parallel] == [r.findings for r in serial]
    errors = [f for r in serial for f in r.findings if f.code == "LQC901"]
    assert len(errors) == 1 + 3 + 3


def test_encodings_are_decoded_before_the_check(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = tree / "pkg"
    (pkg / "legacy.py").unlink()
    (pkg / "broken.py").unlink()
    # latin-1 with a coding cookie: valid, then broken after a non-ASCII character
    (pkg / "latin_ok.py").write_bytes(b"# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n")
    (pkg / "latin_bad.py").write_bytes(b"# -*- coding: latin-1 -*-\nname = 'caf\xe9' +\n")
    # UTF-8 with a BOM: valid, and an error whose column counts characters, not bytes
    (pkg / "bom_ok.py").write_bytes(b"\xef\xbb\xbfname = 'caf\xc3\xa9'\n")
    (pkg / "bom_bad.py").write_bytes(b"\xef\xbb\xbfs = '\xc3\xa9\xc3\xa9' $\n")
    # the same errors in files that name the class (fully parsed): the same columns
    (pkg / "bom_class.py").write_bytes(b"\xef\xbb\xbfs = '\xc3\xa9\xc3\xa9' $  # LinearA8W8Quant\n")
    (pkg / "latin_class.py").write_bytes(
        b"# coding: latin-1\n# LinearA8W8Quant\ns = '\xe9\xe9' $\n"
    )
    # not UTF-8 and no cookie: unreadable, as before
    (pkg / "undecodable.py").write_bytes(b"name = '\xe9'\n")
    assert main(["pkg", "-q"]) == 2
    bom_bad, bom_class, latin_bad, latin_class, undecodable = capsys.readouterr().out.splitlines()
    # columns count characters of the decoded text (CPython would count them in the file
    # on disk, read back as UTF-8, if the parser were given the file's name)
    assert bom_bad == "pkg/bom_bad.py:1:10: LQC901 syntax error: invalid syntax"
    assert bom_class == "pkg/bom_class.py:1:10: LQC901 syntax error: invalid syntax"
    assert latin_class == "pkg/latin_class.py:3:10: LQC901 syntax error: invalid syntax"
    assert latin_bad == "pkg/latin_bad.py:2:16: LQC901 syntax error: invalid syntax"
    assert undecodable.startswith("pkg/undecodable.py:1:1: LQC902 cannot decode file: ")
    assert main(["pkg/latin_ok.py", "pkg/bom_ok.py", "pkg/clean.py", "-q"]) == 0


def test_too_deeply_nested_file_is_reported_not_raised(tree: Path) -> None:
    text = "x = 1" + " + 1" * 100_000 + "\n"  # beyond the compiler's recursion limit
    (tree / "pkg" / "deep.py").write_text(text)
    results = process_files(["pkg/deep.py", "pkg/legacy.py"], "scan", jobs=1)
    (error,) = results[0].findings
    assert (error.code, error.kind, error.line, error.column) == ("LQC901", "syntax-error", 1, 1)
    assert error.message.startswith("syntax error: ")
    assert [f.code for f in results[1].findings] == ["LQC001", "LQC002"]
