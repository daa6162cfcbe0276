"""Both install modes ship the .pth start-up hook: a built wheel and ``pip install -e``.

Each mode installs into a fresh virtual environment (no pip of its own: this venv's pip
installs into it with ``--python``); torch and the other dependencies come from this
venv through a path entry, so nothing is downloaded except pip's build backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import venv
from pathlib import Path

import pytest
from conftest import ROOT, STANDIN

from compat import _legacy_imports

pytestmark = pytest.mark.slow

PTH = "linear_quant_compat_startup.pth"

PROBE = textwrap.dedent(
    """\
    import json, sys, warnings, torch, torch_npu, compat
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        from torch_npu.contrib.module import LinearA8W8Quant
    print(json.dumps([compat.__file__, LinearA8W8Quant is compat.LinearA8W8Quant,
                      [(w.category.__name__, w.lineno) for w in record],
                      type(sys.meta_path[0]).__name__]))
    """
)


def _pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _new_env(where: Path) -> tuple[Path, Path]:
    venv.EnvBuilder(with_pip=False).create(where)
    python = where / "bin" / "python"
    purelib = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # torch & co. from this venv (a plain path entry: its own .pth files are not run)
    (purelib / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, purelib


def _probe(python: Path, cwd: Path) -> list[object]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TORCH_NPU", "LINEAR_QUANT", "PYTHONPATH"))
    }
    env.update({"PYTHONPATH": str(STANDIN), "TORCH_NPU_STANDIN_VARIANT": "future"})
    done = subprocess.run(
        [str(python), "-W", "error", "-c", PROBE],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result: list[object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_wheel_install_ships_and_runs_the_startup_hook(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _pip("wheel", "--no-deps", "--quiet", "-w", str(wheels), str(ROOT))
    (wheel,) = wheels.glob("linear_quant_compat-*.whl")
    python, purelib = _new_env(tmp_path / "env")
    _pip("--python", str(python), "install", "--quiet", "--no-deps", str(wheel))
    assert (purelib / PTH).read_text() == _legacy_imports.startup_pth_line() + "\n"
    assert not (purelib / "_linear_quant_compat_startup.py").exists()
    compat_file, same, warned, first_finder = _probe(python, cwd=tmp_path)
    assert str(compat_file).startswith(str(purelib))  # the installed copy, not the checkout
    assert same is True
    assert warned == [["LinearA8W8QuantDeprecationWarning", 4]]
    assert first_finder == "LegacyImportFinder"  # the stub handed over to compat
    # uninstalling removes the hook with the package
    _pip("--python", str(python), "uninstall", "--yes", "--quiet", "linear-quant-compat")
    assert not (purelib / PTH).exists()


def test_editable_install_ships_and_runs_the_startup_hook(tmp_path: Path) -> None:
    python, purelib = _new_env(tmp_path / "env")
    _pip("--python", str(python), "install", "--quiet", "--no-deps", "-e", str(ROOT))
    assert (purelib / PTH).read_text() == _legacy_imports.startup_pth_line() + "\n"
    compat_file, same, warned, _ = _probe(python, cwd=tmp_path)
    assert str(compat_file) == str(ROOT / "compat" / "__init__.py")  # the checkout itself
    assert same is True
    assert warned == [["LinearA8W8QuantDeprecationWarning", 4]]
