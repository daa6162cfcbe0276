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
    # import torch_npu wakes the hook, which must not import compat.nn (nor compat.ops)
    assert result["after_torch_npu"] == ["compat", "compat._legacy_imports", "compat._version"]
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
