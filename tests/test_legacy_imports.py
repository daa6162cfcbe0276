"""Legacy torch_npu imports of LinearA8W8Quant, in subprocesses of the installed package.

The package is installed (editable, as in CI) with its .pth start-up hook; the stand-in
torch_npu of tests/standin plays a torch_npu that still ships the class (``legacy``),
one that removed it (``future``) and one that fails to import (``broken``).
"""

from __future__ import annotations

import json
import site
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, STANDIN, run_python

from compat import _legacy_imports

PTH = "linear_quant_compat_startup.pth"
PATHS = (
    "torch_npu.contrib.module.LinearA8W8Quant",
    "torch_npu.contrib.module.linear_a8w8_quant.LinearA8W8Quant",
    "torch_npu.contrib.LinearA8W8Quant",
)

# Imports each legacy path in its own statement (lines 6-8), records what it warned.
PROBE = textwrap.dedent(
    """\
    import json, sys, warnings, torch
    import torch_npu
    after_torch_npu = sorted(m for m in sys.modules if m.startswith("compat"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        from torch_npu.contrib.module import LinearA8W8Quant as a
        from torch_npu.contrib.module.linear_a8w8_quant import LinearA8W8Quant as b
        from torch_npu.contrib import LinearA8W8Quant as c
        m = a(16, 8, False)
    import compat
    print(json.dumps({
        "after_torch_npu": after_torch_npu,
        "same": [x is compat.LinearA8W8Quant for x in (a, b, c)],
        "isinstance_upstream": isinstance(m, torch_npu.contrib.module.LinearQuant),
        "isinstance_compat": isinstance(m, compat.LinearQuant),
        "warnings": [[w.category.__name__, w.filename, w.lineno, str(w.message)] for w in record],
        "submodule_file": getattr(sys.modules["torch_npu.contrib.module.linear_a8w8_quant"], "__file__", None),
        "backend": compat.ops.backend.npu_status().state,
    }))
    """
)


def _json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


def test_the_installed_pth_file_is_the_startup_source() -> None:
    expected = _legacy_imports.startup_pth_line() + "\n"
    assert (ROOT / "startup" / PTH).read_text() == expected
    installed = _site_packages() / PTH
    assert installed.is_file(), f"{installed} missing: run pip install -e . (see README)"
    assert installed.read_text() == expected
    assert str(_site_packages()) in site.getsitepackages()


def test_startup_installs_only_a_stub_and_imports_nothing() -> None:
    code = "import json, sys\nprint(json.dumps([type(sys.meta_path[0]).__name__, sorted(sys.modules)]))"
    hooked = _json(run_python(code))
    plain = _json(run_python(code, env={"LINEAR_QUANT_COMPAT_DISABLE": "1"}))
    assert hooked[0] == "LegacyImportStub"
    assert plain[0] != "LegacyImportStub"
    assert hooked[1] == plain[1]  # not one module more at start-up: no torch, no compat
    assert "torch" not in hooked[1] and "compat" not in hooked[1]


@pytest.mark.parametrize("variant", ["legacy", "future"])
def test_legacy_paths_resolve_to_the_adapter_and_warn_at_the_import_line(
    variant: str, tmp_path: Path
) -> None:
    script = tmp_path / "legacy_user.py"
    script.write_text(PROBE)
    result = _json(
        run_python(
            f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))", standin=variant
        )
    )
    # import torch_npu wakes the hook, which must not import compat.nn (nor compat.ops);
    # compat.upstream (torch-free) holds the module paths it watches, compat._stand_in
    # (torch-free) the stand-in's switch it must tell apart, compat._loaders the loader
    assert result["after_torch_npu"] == [
        "compat",
        "compat._legacy_imports",
        "compat._loaders",
        "compat._stand_in",
        "compat._version",
        "compat.upstream",
    ]
    assert result["same"] == [True, True, True]
    assert result["isinstance_upstream"] and result["isinstance_compat"]
    assert result["backend"] == "available"
    warned = [(name, file, line) for name, file, line, _ in result["warnings"]]
    assert warned == [
        ("LinearA8W8QuantDeprecationWarning", str(script), 6),
        ("LinearA8W8QuantDeprecationWarning", str(script), 7),
        ("LinearA8W8QuantDeprecationWarning", str(script), 8),
        ("LinearA8W8QuantDeprecationWarning", str(script), 9),
    ]
    messages = [message for *_, message in result["warnings"]]
    for path, message in zip(PATHS, messages, strict=False):
        assert message.startswith(f"{path} is deprecated")
        assert "from compat import LinearQuant" in message
    if variant == "legacy":
        assert "with linear-quant-compat installed it is compat.LinearA8W8Quant" in messages[0]
        assert result["submodule_file"].endswith("linear_a8w8_quant.py")
    else:
        assert "this torch_npu no longer provides it" in messages[0]
        assert result["submodule_file"] is None  # supplied by compat, no file
    assert messages[3].startswith("LinearA8W8Quant is deprecated")


@pytest.mark.parametrize("variant", ["legacy", "future"])
def test_importing_torch_npu_is_silent_under_w_error(variant: str) -> None:
    # run_python passes -W error: torch_npu's own re-exports must not warn.
    code = "import torch, torch_npu, torch_npu.contrib\nprint(torch_npu.contrib.module.LinearQuant.__name__)"
    done = run_python(code, standin=variant)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "LinearQuant"


def test_one_record_per_import_statement_and_star_imports() -> None:
    code = textwrap.dedent(
        """\
        import json, warnings, torch, torch_npu
        from compat import _deprecation
        events = []
        _deprecation.add_listener(events.append)
        warnings.simplefilter("ignore")
        from torch_npu.contrib.module import LinearA8W8Quant
        from torch_npu.contrib.module import *
        hasattr(torch_npu.contrib, "LinearA8W8Quant")
        print(json.dumps([[e.kind, e.symbol, e.lineno] for e in events]))
        """
    )
    events = _json(run_python(code, standin="legacy"))
    assert events == [
        ["import", "torch_npu.contrib.module.LinearA8W8Quant", 6],
        ["import", "torch_npu.contrib.module.LinearA8W8Quant", 7],
        ["import", "torch_npu.contrib.LinearA8W8Quant", 8],
    ]


def test_compat_first_then_legacy_import() -> None:
    # compat.nn probes torch_npu while compat.nn.linear_quant is half-imported; the
    # hook must neither import compat.nn then nor leave torch_npu's class in place.
    code = textwrap.dedent(
        """\
        import json, warnings, compat
        compat.LinearQuant
        import torch_npu
        from compat.ops import backend
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch_npu.contrib.module import LinearA8W8Quant
            from torch_npu.contrib import LinearA8W8Quant as C
        print(json.dumps([LinearA8W8Quant is compat.LinearA8W8Quant, C is compat.LinearA8W8Quant,
                          backend.npu_status().state,
                          issubclass(compat.LinearQuant, torch_npu.contrib.module.LinearQuant)]))
        """
    )
    for variant in ("legacy", "future"):
        assert _json(run_python(code, standin=variant)) == [True, True, "available", True]


@pytest.mark.parametrize("value", ["1", "true", "YES", " on "])
def test_opt_out_leaves_torch_npu_untouched(value: str) -> None:
    code = textwrap.dedent(
        """\
        import json, sys, warnings, torch, torch_npu, compat
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            from torch_npu.contrib.module import LinearA8W8Quant
        print(json.dumps([LinearA8W8Quant.__module__, len(record), compat.install_legacy_imports(),
                          type(torch_npu.contrib.module.LinearA8W8Quant).__name__]))
        """
    )
    result = _json(run_python(code, standin="legacy", env={"LINEAR_QUANT_COMPAT_DISABLE": value}))
    assert result == ["torch_npu.contrib.module.linear_a8w8_quant", 0, False, "type"]


def test_opt_out_zero_keeps_the_hook() -> None:
    code = "import torch, torch_npu, compat, warnings\nwarnings.simplefilter('ignore')\nprint(torch_npu.contrib.LinearA8W8Quant is compat.LinearA8W8Quant)"
    done = run_python(code, standin="legacy", env={"LINEAR_QUANT_COMPAT_DISABLE": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def _no_site(
    code: str, variant: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -S`` (no .pth files), with torch and compat reachable through PYTHONPATH."""
    import os

    path = os.pathsep.join([str(STANDIN), str(ROOT), str(_site_packages())])
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCH_NPU_STANDIN", "LINEAR_QUANT"))
    }
    full.update({"PYTHONPATH": path, "TORCH_NPU_STANDIN_VARIANT": variant, **(env or {})})
    return subprocess.run(
        [sys.executable, "-S", "-W", "error", "-c", code],
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(ROOT),
    )


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("variant", ["legacy", "future"])
def test_explicit_install_without_pth_files(when: str, variant: str) -> None:
    code = textwrap.dedent(
        f"""\
        import json, sys, warnings, torch, compat
        hooked_at_start = any(type(f).__name__ == "LegacyImportStub" for f in sys.meta_path)
        if {when == "before"}:
            first = compat.install_legacy_imports()
        import torch_npu
        if {when == "after"}:
            first = compat.install_legacy_imports()
        again = compat.install_legacy_imports()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch_npu.contrib.module.linear_a8w8_quant import LinearA8W8Quant
            from torch_npu.contrib import LinearA8W8Quant as C
        finders = [f for f in sys.meta_path if getattr(f, "linear_quant_compat_finder", False)]
        print(json.dumps([hooked_at_start, first, again, LinearA8W8Quant is compat.LinearA8W8Quant,
                          C is compat.LinearA8W8Quant, len(finders)]))
        """
    )
    assert _json(_no_site(code, variant)) == [False, True, True, True, True, 1]


def test_explicit_install_honours_the_opt_out() -> None:
    code = "import compat\nprint(compat.install_legacy_imports())"
    done = _no_site(code, "legacy", env={"LINEAR_QUANT_COMPAT_DISABLE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_without_torch_npu_nothing_is_fabricated() -> None:
    code = textwrap.dedent(
        """\
        import importlib.util, json, sys, warnings, compat
        installed = compat.install_legacy_imports()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = compat.LinearA8W8Quant(8, 4)
        errors = []
        for name in ("torch_npu", "torch_npu.contrib.module", "torch_npu.contrib.module.linear_a8w8_quant"):
            try:
                __import__(name)
            except ModuleNotFoundError as err:
                errors.append(err.name)
        print(json.dumps([installed, type(m).__name__, "torch_npu" in sys.modules,
                          importlib.util.find_spec("torch_npu") is None, errors,
                          compat.ops.backend.npu_status().state]))
        """
    )
    assert _json(run_python(code)) == [
        True,
        "LinearA8W8Quant",
        False,
        True,
        ["torch_npu"] * 3,
        "absent",
    ]


def test_broken_torch_npu_stays_broken_and_compat_works() -> None:
    code = textwrap.dedent(
        """\
        import json, warnings, compat
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = compat.LinearA8W8Quant(8, 4)
        try:
            import torch_npu.contrib.module
        except ImportError as err:
            error = str(err)
        print(json.dumps([compat.ops.backend.npu_status().state, "libhccl" in error]))
        """
    )
    assert _json(run_python(code, standin="broken")) == ["broken", True]


def test_legacy_pickles_load_as_the_adapter(tmp_path: Path) -> None:
    saved = tmp_path / "legacy_model.pt"
    save = textwrap.dedent(
        f"""\
        import warnings, torch, torch_npu
        warnings.simplefilter("ignore")
        from torch_npu.contrib.module import LinearA8W8Quant
        m = LinearA8W8Quant(6, 4, offset=True)
        assert type(m).__module__ == "torch_npu.contrib.module.linear_a8w8_quant"
        torch.save(torch.nn.Sequential(m), {str(saved)!r})
        """
    )
    done = run_python(save, standin="legacy", env={"LINEAR_QUANT_COMPAT_DISABLE": "1"})
    assert done.returncode == 0, done.stderr
    load = textwrap.dedent(
        f"""\
        import json, warnings, torch, torch_npu, compat
        from compat.nn.linear_a8w8_quant import replacement_call
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            model = torch.load({str(saved)!r}, weights_only=False)
        m = model[0]
        print(json.dumps([type(m) is compat.LinearA8W8Quant, replacement_call(m),
                          [(w.category.__name__, w.lineno) for w in record]]))
        """
    )
    for variant in ("legacy", "future"):
        result = _json(run_python(load, standin=variant))
        assert result == [
            True,
            "LinearQuant(6, 4, bias=True, offset=True, output_dtype=torch.int8)",
            [["LinearA8W8QuantDeprecationWarning", 5]],
        ]


# --- audit regressions: one line, two uses; the opt-out and -W; pytest's crash line ------


def _run_clean(
    args: list[str], *, variant: str | None, env: dict[str, str] | None = None, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with the default warning filters (no ``-W error``, unlike
    ``run_python``) and no inherited warning, opt-out or pytest settings."""
    import os

    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCH_NPU_STANDIN", "LINEAR_QUANT", "PYTEST", "PYTHON"))
    }
    full.pop("TORCH_DEVICE_BACKEND_AUTOLOAD", None)
    if variant is not None:
        full.update({"PYTHONPATH": str(STANDIN), "TORCH_NPU_STANDIN_VARIANT": variant})
    full.update(env or {})
    return subprocess.run(
        [sys.executable, *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(cwd),
    )


ONE_LINE = """\
import torch, torch_npu
for _ in range(3):
    m = torch_npu.contrib.module.LinearA8W8Quant(512, 128, True, True)
print("built")
"""


@pytest.mark.parametrize("variant", ["legacy", "future"])
def test_legacy_lookup_and_construction_on_one_line_each_warn_once(
    variant: str, tmp_path: Path
) -> None:
    # The "already warned" mark of a site was keyed on (file, line) only: the legacy
    # look-up marked the line and the construction warning on it was never shown.
    script = tmp_path / "one_line.py"
    script.write_text(ONE_LINE)
    done = _run_clean([str(script)], variant=variant, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "built"
    heads = [
        line for line in done.stderr.splitlines() if "LinearA8W8QuantDeprecationWarning" in line
    ]
    assert len(heads) == 2, done.stderr  # once per kind of use, not once per loop pass
    assert heads[0].startswith(
        f"{script}:3: LinearA8W8QuantDeprecationWarning: "
        "torch_npu.contrib.module.LinearA8W8Quant is deprecated"
    )
    assert heads[1].startswith(
        f"{script}:3: LinearA8W8QuantDeprecationWarning: LinearA8W8Quant is deprecated"
    )
    assert (
        "Equivalent call: LinearQuant(512, 128, bias=True, offset=True, output_dtype=torch.int8). "
        "Legacy positional arguments: bias=True (3rd), offset=True (4th)"
    ) in heads[1]


OPT_OUT_SCRIPT = """\
import json, sys
print(json.dumps([any(type(f).__name__ == "LegacyImportStub" for f in sys.meta_path),
                  sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "compat"))]),
      flush=True)
from compat import LinearA8W8Quant
LinearA8W8Quant(8, 4)
print("constructed")
"""


@pytest.mark.parametrize("form", ["-W", "PYTHONWARNINGS"])
@pytest.mark.parametrize("value", ["1", "yes"])
def test_opt_out_still_applies_w_options_naming_the_category(
    form: str, value: str, tmp_path: Path
) -> None:
    # LINEAR_QUANT_COMPAT_DISABLE switched the whole start-up hook off, the application of
    # -W error::compat.LinearA8W8QuantDeprecationWarning included: construction passed.
    script = tmp_path / "opted_out.py"
    script.write_text(OPT_OUT_SCRIPT)
    option = "error::compat.LinearA8W8QuantDeprecationWarning"
    env = {"LINEAR_QUANT_COMPAT_DISABLE": value}
    if form == "-W":
        args = ["-W", option, str(script)]
    else:
        args, env["PYTHONWARNINGS"] = [str(script)], option
    done = _run_clean(args, variant="legacy", env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert "constructed" not in lines
    hooked, modules = json.loads(lines[0])
    assert hooked is False  # the opt-out still switches the legacy import hook off
    # cheap start-up: only compat's torch-free modules, for the option
    assert modules == ["compat", "compat._deprecation", "compat._version"]
    assert f'File "{script}", line 6, in <module>' in done.stderr
    assert (
        done.stderr.rstrip()
        .splitlines()[-1]
        .startswith("compat.LinearA8W8QuantDeprecationWarning: LinearA8W8Quant is deprecated")
    )


def test_opt_out_without_such_options_imports_nothing_at_start(tmp_path: Path) -> None:
    code = "import json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith(('torch', 'compat')))))"
    for args in (["-c", code], ["-W", "error::FutureWarning", "-c", code]):
        done = _run_clean(
            args, variant="legacy", env={"LINEAR_QUANT_COMPAT_DISABLE": "1"}, cwd=tmp_path
        )
        assert _json(done) == []


LEGACY_TESTS = """\
import torch
import torch_npu


def test_attribute():
    torch_npu.contrib.module.LinearA8W8Quant(8, 4)


def test_from_import():
    from torch_npu.contrib.module.linear_a8w8_quant import LinearA8W8Quant  # noqa: F401
"""


@pytest.mark.parametrize("variant", ["legacy", "future"])
def test_pytest_reports_the_legacy_use_as_the_crash_location(variant: str, tmp_path: Path) -> None:
    # With the warning as an error, pytest blamed compat/_deprecation.py: the legacy
    # attribute hook and the deprecation helpers now hide their frames.
    (tmp_path / "test_legacy.py").write_text(LEGACY_TESTS)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nfilterwarnings =\n    error::compat.LinearA8W8QuantDeprecationWarning\n"
    )
    base = ["-m", "pytest", "-p", "no:cacheprovider", "-q"]
    line = _run_clean([*base, "--tb=line"], variant=variant, cwd=tmp_path)
    assert line.returncode == 1, line.stdout + line.stderr
    # --tb=line: one "path:line: exception" line per failure (after an "E   ..." line)
    crashes = [
        s.split(": ", 1)[0]
        for s in line.stdout.splitlines()
        if ": compat.LinearA8W8QuantDeprecationWarning: " in s and not s.startswith("E ")
    ]
    assert crashes == [
        f"{tmp_path / 'test_legacy.py'}:6",
        f"{tmp_path / 'test_legacy.py'}:10",
    ], line.stdout
    assert "_deprecation.py" not in line.stdout and "_legacy_imports.py" not in line.stdout
    long = _run_clean(base, variant=variant, cwd=tmp_path)
    assert long.returncode == 1, long.stdout + long.stderr
    assert "test_legacy.py:6: LinearA8W8QuantDeprecationWarning" in long.stdout
    assert "test_legacy.py:10: LinearA8W8QuantDeprecationWarning" in long.stdout
    assert str(ROOT / "compat") not in long.stdout  # no frame of compat shown at all
