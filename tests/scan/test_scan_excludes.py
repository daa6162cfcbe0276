"""``--exclude`` pattern semantics (a ``.gitignore`` subset)."""

from __future__ import annotations

import pytest

from compat.scan import Excludes


@pytest.mark.parametrize(
    ("patterns", "path", "is_dir", "expected"),
    [
        (["*.pyi"], "a/b/c.pyi", False, True),
        (["*.pyi"], "a/b/c.py", False, False),
        (["build/"], "src/build", True, True),
        (["build/"], "src/build", False, False),  # trailing slash: directories only
        (["/build"], "build", True, True),
        (["/build"], "src/build", True, False),  # leading slash anchors
        (["src/gen"], "src/gen", True, True),
        (["src/gen"], "lib/src/gen", True, False),  # a slash inside anchors too
        (["tests/**/data"], "tests/data", True, True),
        (["tests/**/data"], "tests/a/b/data", True, True),
        (["**/fixtures"], "x/y/fixtures", True, True),
        (["legacy/**"], "legacy/a/b.py", False, True),
        (["m?.py"], "pkg/m1.py", False, True),
        (["m?.py"], "pkg/m10.py", False, False),
        (["m[0-4].py"], "m3.py", False, True),
        (["m[!0-4].py"], "m3.py", False, False),
        (["m[!0-4].py"], "m7.py", False, True),
        (["*"], "a/b.py", False, True),
        (["a*"], "x/ab/c.py", False, False),  # * does not cross directories
        (["*.py", "!keep.py"], "src/keep.py", False, False),  # later negation wins
        (["!keep.py", "*.py"], "src/keep.py", False, True),
        (["# comment", "", "   "], "comment", False, False),
        (["\\#hash.py"], "#hash.py", False, True),
    ],
)
def test_matches(patterns: list[str], path: str, is_dir: bool, expected: bool) -> None:
    assert Excludes(patterns).matches(path, is_dir) is expected


def test_parent_directory_excludes_children() -> None:
    excludes = Excludes(["generated/"])
    assert excludes.excludes("pkg/generated/x.py", False)
    assert not excludes.matches("pkg/generated/x.py", False)
    assert not excludes.excludes("pkg/generator.py", False)


def test_empty() -> None:
    assert not Excludes([])
    assert not Excludes(["# only a comment"])
    assert Excludes(["x"])
