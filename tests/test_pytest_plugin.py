"""The pytest plugin (entry point ``pytest11``): --compat-report, --compat-strict, --compat-report-json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import STANDIN

from compat import _deprecation
from compat.pytest_plugin import PLUGIN_NAME

pytest_plugins = ["pytester"]

# Twelve construction sites in three files (more than the ten after which pytest's own
# warning summary collapses), one of them reached from five tests.
HELPERS = """\
from compat import LinearA8W8Quant


def make(n):
    return LinearA8W8Quant(16, n, offset=True)
"""

TEST_A = """\
from compat import LinearA8W8Quant
from helpers import make


def test_one():
    make(8)


def test_two():
    make(16)
    LinearA8W8Quant(16, 8, False)


def test_three():
    make(8)


def test_four():
    make(8)


def test_five():
    make(8)
"""

TEST_B = (
    "from compat import LinearA8W8Quant\n\n\n"
    + "\n\n".join(f"def test_b{i}():\n    LinearA8W8Quant({i + 1}, 4)" for i in range(10))
    + "\n"
)

PLAIN = """\
from compat import LinearQuant


def test_clean():
    LinearQuant(4, 4)
"""

# filterwarnings keeps pytest's own summary readable; the report must not care.
QUIET = ["-W", "ignore::compat.LinearA8W8QuantDeprecationWarning", "-p", "no:cacheprovider"]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(helpers=HELPERS, test_a=TEST_A, test_b=TEST_B)
    pytester.syspathinsert()
    return pytester


def _site_lines(stdout: list[str]) -> list[str]:
    return [line for line in stdout if line.startswith(("helpers.py:", "test_a.py:", "test_b.py:"))]


def test_inactive_without_its_options(project: pytest.Pytester) -> None:
    result = project.runpytest(*QUIET)
    result.assert_outcomes(passed=15)
    assert "linear-quant-compat:" not in result.stdout.str()  # no report section
    config = project.parseconfigure()
    assert not config.pluginmanager.has_plugin(PLUGIN_NAME)
    assert config.pluginmanager.has_plugin("linear_quant_compat")  # the entry point itself


def test_report_lists_every_site_even_past_ten_and_when_ignored(project: pytest.Pytester) -> None:
    result = project.runpytest("--compat-report", *QUIET)
    result.assert_outcomes(passed=15)
    assert result.ret == 0
    out = result.stdout.lines
    result.stdout.fnmatch_lines(
        ["*= linear-quant-compat: 12 deprecated LinearA8W8Quant call sites (16 uses) =*"]
    )
    assert _site_lines(out) == [
        "helpers.py:5: constructed, 5x",
        "test_a.py:11: constructed, 1x",
        *[f"test_b.py:{5 + 3 * i}: constructed, 1x" for i in range(10)],
    ]
    at = out.index("helpers.py:5: constructed, 5x")
    assert out[at + 1] == (
        "    tests: test_a.py::test_one, test_a.py::test_two, test_a.py::test_three (+2 more)"
    )
    assert out[at + 2] == (
        "    replace with: LinearQuant(16, 8, bias=True, offset=True, output_dtype=torch.int8) | "
        "LinearQuant(16, 16, bias=True, offset=True, output_dtype=torch.int8)"
    )
    at = out.index("test_a.py:11: constructed, 1x")
    assert out[at + 1 : at + 3] == [
        "    tests: test_a.py::test_two",
        "    replace with: LinearQuant(16, 8, bias=False, offset=False, output_dtype=torch.int8)",
    ]
    assert f"See {_deprecation.DOCS_URL}" in out


def test_report_with_no_site(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain=PLAIN)
    result = pytester.runpytest("--compat-report", "--compat-strict", *QUIET)
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*= linear-quant-compat: no deprecated LinearA8W8Quant use =*"])


BROKEN_IMPORT = "import module_that_does_not_exist  # noqa: F401\n\n\ndef test_never():\n    pass\n"


def _incomplete(result: pytest.RunResult) -> list[str]:
    out = result.stdout.lines
    at = next(i for i, line in enumerate(out) if "report is INCOMPLETE" in line)
    return [line.strip() for line in out[at + 1 :] if line.startswith("    ")][:-1]


def test_a_collection_error_makes_the_report_incomplete(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    pytester.makepyfile(test_plain=PLAIN, test_broken=BROKEN_IMPORT)
    target = tmp_path / "r.json"
    result = pytester.runpytest("--compat-report", "--compat-report-json", str(target), *QUIET)
    assert result.ret == pytest.ExitCode.INTERRUPTED  # pytest's own verdict on the error
    assert _incomplete(result) == [
        "1 collection error(s) (test_broken.py): code those modules import did not (all) run",
        "no test ran",
    ]
    result.stdout.fnmatch_lines(
        ["*= linear-quant-compat: no deprecated LinearA8W8Quant use in what ran =*"]
    )
    assert "no deprecated LinearA8W8Quant use =" not in result.stdout.str()
    report = json.loads(target.read_text())
    assert report["complete"] is False and len(report["incomplete_reasons"]) == 2
    # the tests that can run do run: still incomplete, and strict fails a passing session
    result = pytester.runpytest("--compat-strict", "--continue-on-collection-errors", *QUIET)
    result.assert_outcomes(passed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert _incomplete(result) == [
        "1 collection error(s) (test_broken.py): code those modules import did not (all) run"
    ]
    result.stdout.fnmatch_lines(["--compat-strict: failing the session: the report is incomplete"])


def test_no_test_run_or_an_early_stop_makes_the_report_incomplete(
    project: pytest.Pytester,
) -> None:
    result = project.runpytest("--compat-report", "--compat-strict", "-k", "no_such_test", *QUIET)
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert _incomplete(result) == ["no test ran"]
    project.makepyfile(test_0_fails="def test_fails_first():\n    assert False\n")
    result = project.runpytest("--compat-report", "-x", *QUIET)
    result.assert_outcomes(failed=1)
    reasons = _incomplete(result)
    assert len(reasons) == 1 and reasons[0].startswith("the session stopped early (")
    assert reasons[0].endswith("later tests did not run")


def test_a_complete_report_says_nothing_of_incompleteness(project: pytest.Pytester) -> None:
    result = project.runpytest("--compat-report", *QUIET)
    assert "INCOMPLETE" not in result.stdout.str() and "in what ran" not in result.stdout.str()


def test_strict_fails_a_passing_session(project: pytest.Pytester) -> None:
    result = project.runpytest("--compat-strict", *QUIET)
    result.assert_outcomes(passed=15)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        ["*12 deprecated LinearA8W8Quant call sites*", "--compat-strict: failing the session: 12 *"]
    )
    assert len(_site_lines(result.stdout.lines)) == 12  # strict prints the report too


def test_strict_keeps_a_worse_exit_code(project: pytest.Pytester) -> None:
    project.makepyfile(test_fail="def test_fail():\n    assert False\n")
    result = project.runpytest("--compat-strict", *QUIET)
    result.assert_outcomes(passed=15, failed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_json_report(project: pytest.Pytester, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "compat.json"
    result = project.runpytest("--compat-report-json", str(target), *QUIET)
    result.assert_outcomes(passed=15)
    assert result.ret == 0
    assert "deprecated LinearA8W8Quant call site" not in result.stdout.str()  # JSON only
    report = json.loads(target.read_text())
    assert report["tool"] == "linear-quant-compat"
    assert report["removal_version"] == _deprecation.REMOVAL_VERSION
    assert (report["total_sites"], report["total_uses"]) == (12, 16)
    assert report["sites"][0] == {
        "path": "helpers.py",
        "line": 5,
        "kind": "construct",
        "symbol": "LinearA8W8Quant",
        "count": 5,
        "tests": ["test_a.py::test_one", "test_a.py::test_two", "test_a.py::test_three"],
        "more_tests": 2,
        "replacement": "LinearQuant(16, 8, bias=True, offset=True, output_dtype=torch.int8)",
        "other_replacements": [
            "LinearQuant(16, 16, bias=True, offset=True, output_dtype=torch.int8)"
        ],
    }
    assert [(s["path"], s["line"], s["count"]) for s in report["sites"][2:]] == [
        ("test_b.py", 5 + 3 * i, 1) for i in range(10)
    ]
    assert not list(target.parent.glob("*.tmp"))


def test_json_path_that_is_a_directory_is_a_usage_error(
    project: pytest.Pytester, tmp_path: Path
) -> None:
    result = project.runpytest("--compat-report-json", str(tmp_path), *QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--compat-report-json:*is a directory; give a file path*"])


def test_listener_is_removed_at_the_end_of_the_session(project: pytest.Pytester) -> None:
    before = list(_deprecation._listeners)
    project.runpytest("--compat-report", *QUIET)
    assert _deprecation._listeners == before


# --- legacy imports, collection, warnings as errors: a subprocess with the stand-in -----

CONFTEST = """\
import torch  # the stand-in torch_npu needs torch first (the real one does not)
from torch_npu.contrib import LinearA8W8Quant  # a legacy import in conftest.py
"""

TEST_IMPORTS = """\
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the report still sees this import
    from torch_npu.contrib.module import LinearA8W8Quant


def test_construct():
    LinearA8W8Quant(8, 4)
"""


def test_imports_collection_and_warnings_as_errors(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_imports=TEST_IMPORTS)
    pytester.makeini(
        "[pytest]\nfilterwarnings =\n    error::compat.LinearA8W8QuantDeprecationWarning\n"
    )
    target = pytester.path / "report.json"
    env_before = dict(os.environ)
    try:
        os.environ["PYTHONPATH"] = str(STANDIN)
        os.environ["TORCH_NPU_STANDIN_VARIANT"] = "future"
        result = pytester.runpytest_subprocess(
            "--compat-report",
            "--compat-report-json",
            str(target),
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::compat.LinearA8W8QuantDeprecationWarning:conftest",
        )
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    # the ini's error filter makes the construction fail at the test's line (compat's
    # frames are hidden: the report ends there)...
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            ">       LinearA8W8Quant(8, 4)",
            "E       compat.LinearA8W8QuantDeprecationWarning: LinearA8W8Quant is deprecated*",
            "test_imports.py:9: LinearA8W8QuantDeprecationWarning",
        ]
    )
    # ...and the report still has it, with the imports seen at start-up and collection
    report = json.loads(target.read_text())
    sites = [(s["path"], s["line"], s["kind"], s["symbol"], s["tests"]) for s in report["sites"]]
    assert sites == [
        ("conftest.py", 2, "import", "torch_npu.contrib.LinearA8W8Quant", ["(session start)"]),
        (
            "test_imports.py",
            5,
            "import",
            "torch_npu.contrib.module.LinearA8W8Quant",
            ["test_imports.py (collection)"],
        ),
        ("test_imports.py", 9, "construct", "LinearA8W8Quant", ["test_imports.py::test_construct"]),
    ]
    assert report["sites"][0]["replacement"] == "from compat import LinearQuant"
    result.stdout.fnmatch_lines(
        [
            "conftest.py:2: imported as torch_npu.contrib.LinearA8W8Quant, 1x",
            "test_imports.py:5: imported as torch_npu.contrib.module.LinearA8W8Quant, 1x",
            "test_imports.py:9: constructed, 1x",
        ]
    )


@pytest.mark.slow
def test_xdist_workers_report_to_the_controller(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    target = project.path / "report.json"
    result = project.runpytest_subprocess(
        "-n", "2", "--compat-report", "--compat-report-json", str(target), *QUIET
    )
    result.assert_outcomes(passed=15)
    report = json.loads(target.read_text())
    assert (report["total_sites"], report["total_uses"]) == (12, 16)
    assert report["sites"][0]["count"] == 5 and len(report["sites"][0]["tests"]) == 3
    assert len(_site_lines(result.stdout.lines)) == 12


# --- a legacy look-up and a construction on one line: two sites, two warnings ------------

TEST_ONE_LINE = """\
import torch
import torch_npu


def test_one_line():
    for _ in range(3):
        torch_npu.contrib.module.LinearA8W8Quant(8, 4, True)
"""


def test_lookup_and_construction_on_one_line_are_two_sites(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "Already warned" is keyed on (file, line, kind): pytest's summary shows both warnings
    # of the line once, and the report still counts every use of each kind.
    pytester.makepyfile(test_one_line=TEST_ONE_LINE)
    target = pytester.path / "report.json"
    monkeypatch.setenv("PYTHONPATH", str(STANDIN))
    monkeypatch.setenv("TORCH_NPU_STANDIN_VARIANT", "legacy")
    result = pytester.runpytest_subprocess(
        "--compat-report-json", str(target), "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, warnings=2)
    result.stdout.fnmatch_lines(
        [
            "*test_one_line.py:7: LinearA8W8QuantDeprecationWarning: "
            "torch_npu.contrib.module.LinearA8W8Quant is deprecated*",
            "*test_one_line.py:7: LinearA8W8QuantDeprecationWarning: "
            "LinearA8W8Quant is deprecated*Equivalent call: LinearQuant(8, 4, bias=True, "
            "offset=False, output_dtype=torch.int8). Legacy positional arguments: bias=True (3rd)*",
        ]
    )
    report = json.loads(target.read_text())
    sites = [
        (s["path"], s["line"], s["kind"], s["count"], s["replacement"]) for s in report["sites"]
    ]
    assert sites == [
        (
            "test_one_line.py",
            7,
            "construct",
            3,
            "LinearQuant(8, 4, bias=True, offset=False, output_dtype=torch.int8)",
        ),
        ("test_one_line.py", 7, "import", 3, "from compat import LinearQuant"),
    ]
