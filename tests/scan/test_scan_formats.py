"""CI formats of ``python -m compat scan``: GitHub Actions annotations and SARIF 2.1.0."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from compat.cli.scan import main
from compat.scan import CODES, Finding, format_github

LEGACY = """\
import torch
from torch_npu.contrib.module import LinearA8W8Quant

layer = LinearA8W8Quant(5, 127, False)
"""
BROKEN = "def f(:\n    pass\n"


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "legacy.py").write_text(LEGACY)
    (tmp_path / "pkg" / "a,b:c%d.py").write_text(LEGACY)  # characters the rules escape
    (tmp_path / "pkg" / "broken.py").write_text(BROKEN)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _unescape(text: str) -> str:
    # the inverse of GitHub's workflow-command escaping (docs: "Workflow commands")
    for escaped, plain in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(escaped, plain)
    return text


COMMAND = re.compile(r"^::warning (?P<props>[^:]*)::(?P<message>.*)$")


def test_github_annotations(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pkg", "-q", "--format", "text"]) == 1
    text = capsys.readouterr().out.splitlines()
    assert main(["pkg", "-q", "--format", "github"]) == 1
    out = capsys.readouterr().out
    assert out.endswith("\n")
    lines = out.splitlines()
    assert len(lines) == len(text) == 5  # 2 + 2 uses, 1 syntax error
    for line, plain in zip(lines, text, strict=True):
        match = COMMAND.match(line)
        assert match, line
        props = dict(item.split("=", 1) for item in match["props"].split(","))
        assert set(props) == {"file", "line", "col", "title"}
        assert "\n" not in line and "\r" not in line
        # text is 'path:line:col: CODE message'; paths contain ':' here, so split from the right
        location, rest = plain.split(": LQC", 1)
        path, line_no, col = location.rsplit(":", 2)
        assert _unescape(props["file"]) == path
        assert (props["line"], props["col"]) == (line_no, col)
        assert _unescape(match["message"]) == "LQC" + rest
        assert _unescape(props["title"]).split(" ")[0] == "LQC" + rest.split(" ")[0]
    escaped = [line for line in lines if "a%2Cb%3Ac%25d.py" in line]
    assert len(escaped) == 2  # ',' ':' '%' escaped in the file property


def test_github_escapes_message_data() -> None:
    finding = Finding("p.py", 1, 2, "LQC901", "syntax-error", "", "50% bad\r\nnext", False)
    assert format_github([finding]) == (
        "::warning file=p.py,line=1,col=2,title=LQC901 syntax-error::LQC901 50%25 bad%0D%0Anext\n"
    )


# -- SARIF 2.1.0: the required fields of the objects used, per the OASIS schema --------
# (sarif-schema-2.1.0.json "required" lists; written out here, no network)


def _require(obj: Any, where: str, *fields: str) -> None:
    assert isinstance(obj, dict), f"{where}: expected an object, got {type(obj).__name__}"
    for name in fields:
        assert name in obj, f"{where}: required property {name!r} missing"


def _check_message(message: Any, where: str) -> None:
    _require(message, where)
    assert "text" in message or "id" in message, f"{where}: message needs text or id"
    if "text" in message:
        assert isinstance(message["text"], str)


def _check_sarif(log: Any, codes_used: list[str]) -> None:
    _require(log, "sarifLog", "version", "runs")
    assert log["version"] == "2.1.0"
    assert isinstance(log["runs"], list) and len(log["runs"]) == 1
    run = log["runs"][0]
    _require(run, "run", "tool")
    _require(run["tool"], "tool", "driver")
    driver = run["tool"]["driver"]
    _require(driver, "toolComponent", "name")
    rules = driver["rules"]
    ids = [rule["id"] for rule in rules]
    assert len(ids) == len(set(ids)), "one rule per code"
    assert sorted(ids) == sorted(CODES.values())
    for number, rule in enumerate(rules):
        _require(rule, f"rules[{number}]", "id")
        _require(rule["shortDescription"], f"rules[{number}].shortDescription", "text")
        assert rule["defaultConfiguration"]["level"] in ("none", "note", "warning", "error")
    results = run["results"]
    assert isinstance(results, list)
    assert sorted(r["ruleId"] for r in results) == sorted(codes_used)
    for number, result in enumerate(results):
        where = f"results[{number}]"
        _require(result, where, "message")
        _check_message(result["message"], f"{where}.message")
        assert result["level"] in ("none", "note", "warning", "error")
        index = result["ruleIndex"]
        assert isinstance(index, int) and 0 <= index < len(rules)
        assert rules[index]["id"] == result["ruleId"]
        assert isinstance(result["locations"], list) and result["locations"]
        for location in result["locations"]:
            physical = location["physicalLocation"]
            # physicalLocation: anyOf [address] or [artifactLocation]
            assert "artifactLocation" in physical or "address" in physical
            uri = physical["artifactLocation"]["uri"]
            assert isinstance(uri, str) and not uri.startswith("/")
            region = physical["region"]
            assert isinstance(region["startLine"], int) and region["startLine"] >= 1
            assert isinstance(region["startColumn"], int) and region["startColumn"] >= 1


def test_sarif_log(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pkg", "-q", "--format", "json"]) == 1
    expected = json.loads(capsys.readouterr().out)
    assert main(["pkg", "-q", "--format", "sarif"]) == 1
    log = json.loads(capsys.readouterr().out)
    _check_sarif(log, [f["code"] for f in expected])
    run = log["runs"][0]
    got = [
        (
            unquote(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]),
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            r["locations"][0]["physicalLocation"]["region"]["startColumn"],
            r["ruleId"],
            r["message"]["text"],
            r["level"],
        )
        for r in run["results"]
    ]
    assert got == [
        (
            f["path"],
            f["line"],
            f["column"],
            f["code"],
            f["message"],
            "error" if f["code"] == "LQC901" else "warning",
        )
        for f in expected
    ]
    assert run["columnKind"] == "unicodeCodePoints"


def test_sarif_with_nothing_found_is_still_a_valid_log(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tree / "pkg" / "clean.py").write_text("import os\n")
    assert main(["pkg/clean.py", "-q", "--format", "sarif"]) == 0
    log = json.loads(capsys.readouterr().out)
    _check_sarif(log, [])
    assert log["runs"][0]["results"] == []


def test_sarif_check_catches_a_missing_required_field(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["pkg", "-q", "--format", "sarif"]) == 1
    log = json.loads(capsys.readouterr().out)
    del log["runs"][0]["results"][0]["message"]
    with pytest.raises(AssertionError, match="message"):
        _check_sarif(log, [r["ruleId"] for r in log["runs"][0]["results"]])
