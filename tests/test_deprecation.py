"""The deprecation warning of LinearA8W8Quant: category, message, attribution, frequency."""

from __future__ import annotations

import inspect
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run_python

import compat
from compat import LinearA8W8Quant, LinearA8W8QuantDeprecationWarning, _deprecation

CATEGORY = LinearA8W8QuantDeprecationWarning
HERE = __file__


def line_above() -> int:
    """Line number of the caller's previous line (where the construction is)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    return frame.f_back.f_lineno - 1


def only(record: Any) -> warnings.WarningMessage:
    ours = [w for w in record if issubclass(w.category, CATEGORY)]
    assert len(ours) == 1, [str(w.message) for w in record]
    return ours[0]


def test_category_is_a_future_warning_exported_from_compat() -> None:
    assert issubclass(CATEGORY, FutureWarning)
    assert compat.LinearA8W8QuantDeprecationWarning is CATEGORY
    assert (
        f"{CATEGORY.__module__}.{CATEGORY.__qualname__}"
        == "compat.LinearA8W8QuantDeprecationWarning"
    )


def test_resolving_the_category_does_not_import_torch() -> None:
    # pytest's filterwarnings and python -W resolve it before any test imports torch.
    code = "import sys, compat\ncompat.LinearA8W8QuantDeprecationWarning\nprint('torch' in sys.modules)"
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_message_names_class_replacement_call_removal_version_and_docs() -> None:
    with pytest.warns(CATEGORY) as record:
        LinearA8W8Quant(512, 128, True, True)
    text = str(only(record).message)
    assert text.startswith("LinearA8W8Quant is deprecated; use LinearQuant instead")
    assert "from compat import LinearQuant" in text
    assert "LinearQuant(512, 128, bias=True, offset=True, output_dtype=torch.int8)" in text
    assert "Legacy positional arguments: bias=True (3rd), offset=True (4th)" in text
    assert f"removed in linear-quant-compat {_deprecation.REMOVAL_VERSION}" in text
    assert _deprecation.DOCS_URL in text and _deprecation.DOCS_URL.endswith("docs/migration.md")


def test_keyword_form_names_no_positional_arguments() -> None:
    with pytest.warns(CATEGORY) as record:
        LinearA8W8Quant(16, 8, pertoken_scale=True, output_dtype="fp16")
    text = str(only(record).message)
    assert "positional" not in text
    assert (
        "LinearQuant(16, 8, bias=True, offset=False, pertoken_scale=True, output_dtype=torch.float16)"
        in text
    )


def test_all_legacy_positional_arguments_are_named() -> None:
    with pytest.warns(CATEGORY) as record:
        LinearA8W8Quant(16, 8, False, False, "cpu", torch.float16, "bf16")
    text = str(only(record).message)
    assert (
        "bias=False (3rd), offset=False (4th), device='cpu' (5th), dtype=torch.float16 (6th), "
        "output_dtype='bf16' (7th)"
    ) in text


# --- attribution, the pandas way: the recorded filename and line are the test's own -----


def test_direct_call_is_attributed_to_this_line() -> None:
    with pytest.warns(CATEGORY) as record:
        LinearA8W8Quant(4, 4)
    line = line_above()
    warning = only(record)
    assert (warning.filename, warning.lineno) == (HERE, line)


def _helper(k: int) -> LinearA8W8Quant:
    return LinearA8W8Quant(k, k, offset=True)


HELPER_LINE = inspect.getsourcelines(_helper)[1] + 1


def test_call_through_a_helper_is_attributed_to_the_helper_line() -> None:
    with pytest.warns(CATEGORY) as record:
        _helper(4)
    warning = only(record)
    assert (warning.filename, warning.lineno) == (HERE, HELPER_LINE)


class _Inherits(LinearA8W8Quant):
    """A user subclass without its own __init__."""


class _Overrides(LinearA8W8Quant):
    def __init__(self, k: int) -> None:
        super().__init__(k, k)
        self.tag = "mine"


OVERRIDES_LINE = inspect.getsourcelines(_Overrides.__init__)[1] + 1


def test_subclass_without_init_is_attributed_to_the_construction_line() -> None:
    with pytest.warns(CATEGORY) as record:
        _Inherits(4, 4, False)
    line = line_above()
    warning = only(record)
    assert (warning.filename, warning.lineno) == (HERE, line)
    assert str(warning.message).startswith(
        "_Inherits subclasses LinearA8W8Quant, which is deprecated (make LinearQuant its base)"
    )


def test_subclass_init_is_attributed_to_its_super_call() -> None:
    # The first frame outside compat is the subclass's own __init__: the line to change.
    with pytest.warns(CATEGORY) as record:
        _Overrides(4)
    warning = only(record)
    assert (warning.filename, warning.lineno) == (HERE, OVERRIDES_LINE)


def test_construction_from_inside_torch_is_attributed_to_the_user_line() -> None:
    with pytest.warns(CATEGORY) as record:
        torch.nn.utils.skip_init(LinearA8W8Quant, 4, 4)
    line = line_above()
    warning = only(record)
    assert (warning.filename, warning.lineno) == (HERE, line)


def test_python_3_12_uses_skip_file_prefixes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    def fake_warn(message: str, category: type[Warning], **kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(sys, "version_info", (3, 12, 0, "final", 0))
    monkeypatch.setattr(_deprecation.warnings, "warn", fake_warn)
    LinearA8W8Quant(4, 4)
    assert calls == [{"skip_file_prefixes": _deprecation.skip_prefixes()}]
    prefixes = _deprecation.skip_prefixes()
    assert str(Path(compat.__file__).parent) + "/" in prefixes
    assert str(Path(torch.__file__).parent) + "/" in prefixes


# --- frequency -----------------------------------------------------------------------------


def test_default_filters_warn_once_per_site_even_with_different_messages() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("default")
        for n in (8, 16, 8, 32):
            LinearA8W8Quant(8, n)
        first = line_above()
        for n in (8, 16):
            LinearA8W8Quant(8, n)
        second = line_above()
    ours = [w for w in record if issubclass(w.category, CATEGORY)]
    assert [(w.filename, w.lineno) for w in ours] == [(HERE, first), (HERE, second)]
    assert "LinearQuant(8, 8, bias=True" in str(ours[0].message)


def test_each_new_filter_context_warns_again() -> None:
    for _ in range(2):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("default")
            LinearA8W8Quant(8, 8)
        assert len([w for w in record if issubclass(w.category, CATEGORY)]) == 1


def test_always_filter_warns_every_time() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for n in (8, 8, 16):
            LinearA8W8Quant(8, n)
    assert len([w for w in record if issubclass(w.category, CATEGORY)]) == 3


def test_listeners_see_every_use_even_when_the_warning_is_ignored() -> None:
    events: list[_deprecation.Event] = []
    _deprecation.add_listener(events.append)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                LinearA8W8Quant(8, 4, bias=False)
            line = line_above()
    finally:
        _deprecation.remove_listener(events.append)
    assert [(e.kind, e.symbol, e.filename, e.lineno) for e in events] == [
        ("construct", "LinearA8W8Quant", HERE, line)
    ] * 3
    assert (
        events[0].replacement
        == "LinearQuant(8, 4, bias=False, offset=False, output_dtype=torch.int8)"
    )
    _deprecation.remove_listener(events.append)  # removing twice is harmless


# --- warnings as errors ---------------------------------------------------------------------

SCRIPT = """\
import torch
from compat import LinearA8W8Quant

model = LinearA8W8Quant(64, 32, False)
print("constructed")
"""


@pytest.mark.parametrize(
    "option",
    [
        "error::FutureWarning",
        "error::compat.LinearA8W8QuantDeprecationWarning",
        "error::FutureWarning:__main__",  # only where the user's own module calls it
    ],
)
def test_warnings_as_errors_raise_at_the_users_line(tmp_path: Path, option: str) -> None:
    script = tmp_path / "legacy_model.py"
    script.write_text(SCRIPT)
    done = run_python(
        f"import runpy, sys; sys.argv = ['x']; runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    # run_python already passes -W error; check the option on its own too:
    import subprocess

    alone = subprocess.run(
        [sys.executable, "-W", option, str(script)], capture_output=True, text=True, timeout=180
    )
    for result in (done, alone):
        assert result.returncode == 1
        assert "constructed" not in result.stdout
        assert f'File "{script}", line 4, in <module>' in result.stderr
        assert "LinearA8W8QuantDeprecationWarning: LinearA8W8Quant is deprecated" in result.stderr


def test_a_later_w_option_still_wins_over_an_earlier_one_naming_the_category(
    tmp_path: Path,
) -> None:
    import subprocess

    script = tmp_path / "legacy_model.py"
    script.write_text(SCRIPT)
    args = ["-W", "error::compat.LinearA8W8QuantDeprecationWarning", "-W", "ignore::FutureWarning"]
    done = subprocess.run(
        [sys.executable, *args, str(script)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "constructed"
    assert "LinearA8W8QuantDeprecationWarning" not in done.stderr


def test_ignoring_a_different_module_keeps_the_warning(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "legacy_model.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, "-W", "error::FutureWarning:some_library", str(script)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert f"{script}:4: LinearA8W8QuantDeprecationWarning" in done.stderr
    assert done.stdout.strip() == "constructed"


def test_default_run_shows_the_warning_once_per_site(tmp_path: Path) -> None:
    import subprocess

    script = tmp_path / "loop.py"
    script.write_text(
        textwrap.dedent(
            """\
            from compat import LinearA8W8Quant
            for n in (8, 16, 32):
                LinearA8W8Quant(8, n)
            LinearA8W8Quant(8, 8)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("LinearA8W8QuantDeprecationWarning") == 2
    assert f"{script}:3: " in done.stderr and f"{script}:4: " in done.stderr


# --- pytest's crash location under filterwarnings = error ----------------------------------

CRASH_TESTS = """\
from compat import LinearA8W8Quant


class Mine(LinearA8W8Quant):
    pass


def test_direct():
    LinearA8W8Quant(8, 4)


def test_subclass():
    Mine(8, 4, False)
"""


def test_pytest_reports_the_users_line_as_the_crash_location(tmp_path: Path) -> None:
    # pytest reported compat/_deprecation.py as the crash location (--tb=line, and the last
    # line of the default report): compat's frames now carry __tracebackhide__.
    import os
    import subprocess

    (tmp_path / "test_model.py").write_text(CRASH_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings =\n    error::compat.LinearA8W8QuantDeprecationWarning\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))}
    base = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*base, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 1, done.stdout + done.stderr
        return done.stdout

    line = run("--tb=line")
    crashes = [
        s.split(": ", 1)[0]
        for s in line.splitlines()
        if ": compat.LinearA8W8QuantDeprecationWarning: " in s and not s.startswith("E ")
    ]
    test_file = tmp_path / "test_model.py"
    assert crashes == [f"{test_file}:9", f"{test_file}:13"], line
    assert "_deprecation.py" not in line and "linear_a8w8_quant.py" not in line
    long = run()
    assert "test_model.py:9: LinearA8W8QuantDeprecationWarning" in long
    assert "test_model.py:13: LinearA8W8QuantDeprecationWarning" in long
    assert str(Path(compat.__file__).parent) not in long  # no frame of compat shown


def test_argument_errors_keep_the_adapters_frame() -> None:
    # __tracebackhide__ is set only around the warning: a bad argument still shows where
    # the adapter rejected it.
    with pytest.raises(TypeError) as err:
        LinearA8W8Quant(8, 4, bias="False")
    names = [entry.frame.code.name for entry in err.traceback]
    assert names[-2:] == ["__init__", "_require_bool"]
    assert not any("__tracebackhide__" in entry.frame.f_locals for entry in err.traceback)
