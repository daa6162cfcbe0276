"""``python -m compat scan``: output formats, exit codes, --fix, --diff, errors, excludes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import compat.cli.scan as scan_cli
from compat.cli.scan import main
from compat.scan import process_files

ROOT = Path(__file__).resolve().parents[2]

LEGACY = """\
import torch
from torch_npu.contrib.module import LinearA8W8Quant

layer = LinearA8W8Quant(5, 127, False)
"""
FIXED = """\
import torch
from torch_npu.contrib.module import LinearQuant

layer = LinearQuant(5, 127, bias=False, output_dtype=torch.int8)
"""
SUBCLASS = """\
from compat import LinearA8W8Quant


class Mine(LinearA8W8Quant):
    pass
"""
CLEAN = "from compat import LinearQuant\n\nlayer = LinearQuant(1, 2)\n"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "legacy.py").write_text(LEGACY)
    (tmp_path / "pkg" / "clean.py").write_text(CLEAN)
    (tmp_path / "pkg" / "notes.txt").write_text("LinearA8W8Quant(1, 2)\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_text_output_and_exit_code_1(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pkg", "-q"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "pkg/legacy.py:2:38: LQC001 import of deprecated torch_npu.contrib.module.LinearA8W8Quant;"
        " import LinearQuant instead (fixable)",
        "pkg/legacy.py:4:9: LQC002 LinearA8W8Quant(...) constructs deprecated"
        " torch_npu.contrib.module.LinearA8W8Quant; use LinearQuant (fixable)",
    ]


def test_json_output(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--format", "json", "pkg/legacy.py", "-q"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [sorted(item) for item in data] == [
        ["code", "column", "fixable", "kind", "line", "message", "path", "symbol"]
    ] * 2
    assert data[1] == {
        "path": "pkg/legacy.py",
        "line": 4,
        "column": 9,
        "code": "LQC002",
        "kind": "call",
        "symbol": "torch_npu.contrib.module.LinearA8W8Quant",
        "message": "LinearA8W8Quant(...) constructs deprecated "
        "torch_npu.contrib.module.LinearA8W8Quant; use LinearQuant (fixable)",
        "fixable": True,
    }


def test_no_findings_exit_0(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pkg/clean.py"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "0 findings" in captured.err
    assert main(["--format", "json", "pkg/clean.py", "-q"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_fix_rewrites_and_reports_nothing_left(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--fix", "pkg"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "fixed 2 uses in 1 file" in captured.err
    assert (tree / "pkg" / "legacy.py").read_text() == FIXED
    assert (tree / "pkg" / "clean.py").read_text() == CLEAN
    # idempotent: nothing more to do, nothing found
    assert main(["--fix", "pkg", "-q"]) == 0
    assert (tree / "pkg" / "legacy.py").read_text() == FIXED
    assert main(["pkg", "-q"]) == 0


def test_fix_leaves_unfixable_and_exits_1(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "pkg" / "sub.py").write_text(SUBCLASS)
    assert main(["--fix", "pkg", "-q"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ")[0:2] for line in out] == [
        ["pkg/sub.py:1:20:", "LQC001"],
        ["pkg/sub.py:4:12:", "LQC003"],
    ]
    assert (tree / "pkg" / "sub.py").read_text() == SUBCLASS
    assert (tree / "pkg" / "legacy.py").read_text() == FIXED


def test_diff_prints_and_writes_nothing(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--diff", "pkg", "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.out == (
        "--- pkg/legacy.py\n"
        "+++ pkg/legacy.py\n"
        "@@ -1,4 +1,4 @@\n"
        " import torch\n"
        "-from torch_npu.contrib.module import LinearA8W8Quant\n"
        "+from torch_npu.contrib.module import LinearQuant\n"
        " \n"
        "-layer = LinearA8W8Quant(5, 127, False)\n"
        "+layer = LinearQuant(5, 127, bias=False, output_dtype=torch.int8)\n"
    )
    assert captured.err == ""  # everything it found is in the diff
    assert (tree / "pkg" / "legacy.py").read_text() == LEGACY


def test_diff_applies_with_patch(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "pkg" / "no_newline.py").write_text("from compat import LinearA8W8Quant")
    assert main(["--diff", "pkg", "-q"]) == 1
    diff = capsys.readouterr().out
    assert "\\ No newline at end of file\n" in diff
    result = subprocess.run(
        ["git", "apply", "-p0", "-"], input=diff, text=True, cwd=tree, capture_output=True
    )
    assert result.returncode == 0, result.stderr
    assert (tree / "pkg" / "legacy.py").read_text() == FIXED
    assert (tree / "pkg" / "no_newline.py").read_text() == "from compat import LinearQuant"


def test_diff_reports_unfixable_on_stdout(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "pkg" / "sub.py").write_text(SUBCLASS)
    assert main(["--diff", "pkg/sub.py", "-q"]) == 1
    captured = capsys.readouterr()
    assert captured.err == ""
    assert [line.split(" ")[1] for line in captured.out.splitlines()] == ["LQC001", "LQC003"]


def test_diff_then_findings_on_stdout_summary_on_stderr_and_applies(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "pkg" / "sub.py").write_text(SUBCLASS)
    assert main(["--diff", "pkg"]) == 1
    captured = capsys.readouterr()
    assert captured.out.endswith("\n")
    head, findings = captured.out.split("pkg/sub.py:", 1)
    assert head.startswith("--- pkg/legacy.py\n") and "+++ pkg/legacy.py\n" in head
    assert findings.startswith("1:20: LQC001") and "pkg/sub.py:4:12: LQC003" in findings
    assert captured.err.startswith("compat scan: scanned ")  # only the summary
    assert len(captured.err.splitlines()) == 1
    result = subprocess.run(
        ["git", "apply", "-p0", "-"], input=captured.out, text=True, cwd=tree, capture_output=True
    )  # the findings after the diff are text git apply skips
    assert result.returncode == 0, result.stderr
    assert (tree / "pkg" / "legacy.py").read_text() == FIXED
    assert (tree / "pkg" / "sub.py").read_text() == SUBCLASS


def test_fix_and_diff_together_is_a_usage_error(tree: Path) -> None:
    assert main(["--fix", "--diff", "pkg"]) == 2


def test_no_path_is_a_usage_error(tree: Path) -> None:
    assert main([]) == 2
    assert main(["--jobs", "-1", "pkg"]) == 2
    assert main(["--format", "xml", "pkg"]) == 2


def test_missing_path_exits_2_but_scans_the_rest(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pkg", "nope.py", "-q"]) == 2
    captured = capsys.readouterr()
    assert "nope.py: no such file or directory" in captured.err
    assert len(captured.out.splitlines()) == 2


def test_syntax_error_is_reported_and_others_still_scanned(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = "from compat import LinearA8W8Quant\n\ndef f(:\n    pass\n"
    (tree / "pkg" / "broken.py").write_text(broken)
    assert main(["pkg", "-q"]) == 1  # a syntax error is a finding, as in ruff and flake8
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "pkg/broken.py:3:7: LQC901 syntax error: invalid syntax"
    assert [line.split(" ")[1] for line in out[1:]] == ["LQC001", "LQC002"]
    assert main(["--format", "json", "pkg/broken.py", "-q"]) == 1
    assert json.loads(capsys.readouterr().out) == [
        {
            "path": "pkg/broken.py",
            "line": 3,
            "column": 7,
            "code": "LQC901",
            "kind": "syntax-error",
            "symbol": "",
            "message": "syntax error: invalid syntax",
            "fixable": False,
        }
    ]


def test_every_file_is_checked_for_syntax(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "pkg" / "unrelated.py").write_text("def f(:\n")
    # a file that does not mention the class cannot contain a use, but is still checked
    expected = "pkg/unrelated.py:1:7: LQC901 syntax error: invalid syntax\n"
    assert main(["pkg/unrelated.py", "pkg/clean.py", "-q"]) == 1
    assert capsys.readouterr().out == expected
    # --check-syntax is still accepted and changes nothing
    assert main(["pkg/unrelated.py", "pkg/clean.py", "-q", "--check-syntax"]) == 1
    assert capsys.readouterr().out == expected
    assert main(["pkg", "-q", "--check-syntax", "--exclude", "unrelated.py"]) == 1


def test_undecodable_file_is_unreadable(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "pkg" / "latin.py").write_bytes(b"name = '\xe9'\n")  # not UTF-8, no cookie
    assert main(["pkg/latin.py", "-q"]) == 2
    out = capsys.readouterr().out
    assert out.startswith("pkg/latin.py:1:1: LQC902 cannot decode file: ")


def test_syntax_error_alone_exits_1_with_fix_and_diff(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "pkg" / "unrelated.py").write_text("def f(:\n")
    for extra in (["--fix"], ["--diff"], ["--format", "json"]):
        assert main(["pkg/unrelated.py", "pkg/clean.py", "-q", *extra]) == 1, extra
    capsys.readouterr()
    assert main(["pkg/clean.py", "-q"]) == 0


def test_internal_error_exits_2(
    tree: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(scan_cli, "process_files", broken)
    assert main(["pkg", "-q"]) == 2
    assert "internal error: RuntimeError: boom" in capsys.readouterr().err


def test_unreadable_exclude_from_is_an_error(tree: Path) -> None:
    assert main(["--exclude-from", "missing.ignore", "pkg"]) == 2


def test_exclude_patterns(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / "pkg" / "generated").mkdir()
    (tree / "pkg" / "generated" / "old.py").write_text(LEGACY)
    assert main(["pkg", "-q", "--exclude", "legacy.py"]) == 1
    assert capsys.readouterr().out.startswith("pkg/generated/old.py:2:38: LQC001")
    assert main(["pkg", "-q", "--exclude", "legacy.py", "--exclude", "generated/"]) == 0
    (tree / ".scanignore").write_text("# comment\n/pkg/generated\n*.py\n!legacy.py\n")
    assert main(["pkg", "-q", "--exclude-from", ".scanignore"]) == 1
    assert {line.split(":")[0] for line in capsys.readouterr().out.splitlines()} == {
        "pkg/legacy.py"
    }
    # excludes also apply to files named on the command line (pre-commit passes those)
    assert main(["pkg/generated/old.py", "-q", "--exclude", "pkg/generated/"]) == 0


def test_default_excludes(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tree / ".venv" / "lib").mkdir(parents=True)
    (tree / ".venv" / "lib" / "dep.py").write_text(LEGACY)
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "x.py").write_text(LEGACY)
    assert main([".", "-q"]) == 1
    assert {line.split(":")[0] for line in capsys.readouterr().out.splitlines()} == {
        "pkg/legacy.py"
    }
    assert main([".", "-q", "--no-default-excludes"]) == 1
    assert {line.split(":")[0] for line in capsys.readouterr().out.splitlines()} == {
        ".venv/lib/dep.py",
        "pkg/__pycache__/x.py",
        "pkg/legacy.py",
    }


def test_named_file_of_any_suffix_is_scanned(tree: Path) -> None:
    assert main(["pkg/notes.txt", "-q"]) == 0  # a call without an import is not a use
    (tree / "pkg" / "script").write_text(LEGACY)
    assert main(["pkg/script", "-q"]) == 1


def test_crlf_bom_and_coding_cookie_survive_fix(tree: Path) -> None:
    crlf = LEGACY.replace("\n", "\r\n").encode("utf-8")
    (tree / "pkg" / "crlf.py").write_bytes(b"\xef\xbb\xbf" + crlf)
    latin = "# -*- coding: latin-1 -*-\n# caf\xe9\n" + LEGACY
    (tree / "pkg" / "latin.py").write_bytes(latin.encode("latin-1"))
    assert main(["--fix", "pkg", "-q"]) == 0
    expected_crlf = b"\xef\xbb\xbf" + FIXED.replace("\n", "\r\n").encode("utf-8")
    assert (tree / "pkg" / "crlf.py").read_bytes() == expected_crlf
    expected_latin = "# -*- coding: latin-1 -*-\n# caf\xe9\n" + FIXED
    assert (tree / "pkg" / "latin.py").read_bytes() == expected_latin.encode("latin-1")


def test_parallel_results_equal_serial(tree: Path) -> None:
    for index in range(12):
        (tree / "pkg" / f"m{index}.py").write_text(LEGACY if index % 3 else SUBCLASS)
    files = sorted(str(p.relative_to(tree)) for p in (tree / "pkg").glob("*.py"))
    serial = process_files(files, "scan", jobs=1)
    parallel = process_files(files, "scan", jobs=2, min_parallel_bytes=0)
    assert [r.path for r in parallel] == files
    assert [r.findings for r in parallel] == [r.findings for r in serial]
    assert sum(len(r.findings) for r in serial) == 2 * 13


def test_module_entry_point_and_no_torch_import(tree: Path) -> None:
    code = (
        "import sys\n"
        "from compat.cli.scan import main\n"
        "rc = main(['pkg', '-q', '--jobs', '1'])\n"
        "assert 'torch' not in sys.modules, 'scan imported torch'\n"
        "assert 'torch_npu' not in sys.modules\n"
        "sys.exit(rc)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.count("pkg/legacy.py") == 2
    result = subprocess.run(
        [sys.executable, "-m", "compat", "scan", "-q", "pkg/clean.py"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_pre_commit_hook_entries_run(tree: Path) -> None:
    text = (ROOT / ".pre-commit-hooks.yaml").read_text()
    hooks = dict(
        zip(
            [line.split(":", 1)[1].strip() for line in text.splitlines() if "- id:" in line],
            [line.split(":", 1)[1].strip() for line in text.splitlines() if "entry:" in line],
            strict=True,
        )
    )
    assert set(hooks) == {"compat-scan", "compat-scan-fix"}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def run(hook: str) -> int:
        # pre-commit runs the entry with the staged file names appended
        command = hooks[hook].replace("python", sys.executable, 1).split()
        return subprocess.run(
            [*command, "pkg/legacy.py", "pkg/clean.py"], cwd=tree, env=env
        ).returncode

    assert run("compat-scan") == 1
    assert run("compat-scan-fix") == 0
    assert (tree / "pkg" / "legacy.py").read_text() == FIXED
    assert run("compat-scan") == 0
