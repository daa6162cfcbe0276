"""What docs/migration.md says about flags and warning filters is what the code does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from compat import LinearA8W8Quant

MIGRATION = (ROOT / "docs" / "migration.md").read_text()


def _paragraph(containing: str) -> str:
    found = [p for p in MIGRATION.split("\n\n") if containing in p]
    assert len(found) == 1, containing
    return " ".join(found[0].split())


# --- bias / offset / pertoken_scale ---------------------------------------------------------


def test_flag_paragraph_matches_the_adapter() -> None:
    # The guide said the flags "must be True or False (nothing is cast)"; the adapter
    # takes them by truth value, like upstream, and refuses only strings.
    text = _paragraph("`bias`, `offset` and `pertoken_scale` are")
    assert "nothing is cast" not in text and "must be `True` or `False`" not in text
    assert "taken by truth value" in text
    assert "`True`/`False`, `1`/`0`, `None` and numpy booleans are accepted" in text
    assert "Only strings (and bytes) are refused with a `TypeError`" in text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in (True, False, 1, 0, None, np.True_, np.False_):
            for flag in ("bias", "offset", "pertoken_scale"):
                m = LinearA8W8Quant(8, 4, **{flag: value})
                assert (getattr(m, flag) is not None) is bool(value)
        for refused in ("False", "True", b"0"):
            with pytest.raises(TypeError):
                LinearA8W8Quant(8, 4, bias=refused)


# --- module filters: -W is exact, the documented regex covers the package -----------------

APP = """\
import sys
{prelude}
import compat, mypackage, mypackage.model, mypackage2

for name, build in [("mypackage", mypackage.build), ("mypackage.model", mypackage.model.build),
                    ("mypackage2", mypackage2.build)]:
    try:
        build()
    except compat.LinearA8W8QuantDeprecationWarning:
        print(name, "raised")
    else:
        print(name, "warned")
"""

BUILD = "from compat import LinearA8W8Quant\n\n\ndef build():\n    return LinearA8W8Quant(8, 4)\n"


def _documented_package_filter() -> str:
    blocks = re.findall(r"```python\n(.*?)```", MIGRATION, flags=re.S)
    found = [b for b in blocks if "warnings.filterwarnings(" in b and "mypackage" in b]
    assert len(found) == 1, blocks
    return found[0]


def _app(tmp_path: Path, prelude: str, *options: str) -> dict[str, str]:
    for package in ("mypackage", "mypackage2"):
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").write_text(BUILD)
    (tmp_path / "mypackage" / "model.py").write_text(BUILD)
    (tmp_path / "app.py").write_text(APP.format(prelude=prelude))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))}
    done = subprocess.run(
        [sys.executable, *options, "app.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split() for line in done.stdout.splitlines())


def test_w_module_field_is_an_exact_match(tmp_path: Path) -> None:
    # As the guide now says: -W's module field does not reach mypackage.model.
    text = _paragraph('python -W "error::FutureWarning:mypackage" app.py')
    assert "not in `mypackage.model`" in text
    assert _app(tmp_path, "", "-W", "error::FutureWarning:mypackage") == {
        "mypackage": "raised",
        "mypackage.model": "warned",
        "mypackage2": "warned",
    }


def test_documented_package_filter_covers_the_package_and_only_it(tmp_path: Path) -> None:
    recipe = _documented_package_filter()
    assert 'module=r"mypackage(\\.|$)"' in recipe
    assert "category=compat.LinearA8W8QuantDeprecationWarning" in recipe
    assert _app(tmp_path, textwrap.dedent(recipe)) == {
        "mypackage": "raised",
        "mypackage.model": "raised",
        "mypackage2": "warned",
    }
