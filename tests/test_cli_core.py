"""python -m compat: help, exit codes, doctor and demo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_python


def _cli(*args: str, standin: str | None = None) -> subprocess.CompletedProcess[str]:
    code = f"import sys, runpy; sys.argv = ['compat', *{list(args)!r}]; runpy.run_module('compat', run_name='__main__')"
    return run_python(code, standin=standin)


def test_help_and_usage_exit_codes() -> None:
    from compat.cli import main

    assert main(["--help"]) == 0
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["doctor", "--no-such-option"]) == 2
    assert main(["demo", "--help"]) == 0


def test_options_may_come_between_positionals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from compat.cli import main

    src = tmp_path / "m.pt"
    legacy = {
        "fc.weight": torch.randint(-128, 128, (4, 8)).float(),
        "fc.scale": torch.rand(4),
        "fc.bias": torch.zeros(4, dtype=torch.int32),
    }
    torch.save(legacy, src)
    assert main(["upgrade", str(src), "-q", str(tmp_path / "a.pt")]) == 0
    assert torch.load(tmp_path / "a.pt", weights_only=True)["fc.weight"].dtype == torch.int8
    assert main(["upgrade", str(src), "--output-dtype", "float16", str(tmp_path / "b.pt")]) == 0
    assert (tmp_path / "b.pt").exists()
    capsys.readouterr()
    assert main(["upgrade", str(src), "-q", str(tmp_path / "c.pt"), "extra"]) == 2
    err = capsys.readouterr().err
    assert "usage: python -m compat upgrade" in err and "unrecognized arguments: extra" in err
    assert not (tmp_path / "c.pt").exists()


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from compat.cli import main

    assert main(["--version"]) == 0
    assert "0.1.0" in capsys.readouterr().out


def test_doctor_without_torch_npu() -> None:
    done = _cli("doctor", "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["torch_npu"] == {"state": "absent"}
    assert info["torch"]["version"].startswith("2.")
    assert info["backends"] == {"cpu": "reference"}
    assert info["self_check"] == "ok" and info["usable"] is True


def test_doctor_with_broken_torch_npu() -> None:
    done = _cli("doctor", standin="broken")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "installed but failing to import" in out
    assert "libhccl.so" in out and "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in out
    assert "backend[cpu]    reference" in out and "usable          yes" in out


def test_doctor_with_working_torch_npu() -> None:
    done = _cli("doctor", "--json", standin="legacy")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["torch_npu"] == {"state": "available", "version": "2.13.0"}


def test_demo_passes_and_prints_table() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-m", "compat", "demo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for needle in (
        "fc1",
        "fc2",
        "fc3",
        "torch.int8",
        "torch.float16",
        "torch.bfloat16",
        "max |diff|",
    ):
        assert needle in done.stdout
    assert "MISMATCH" not in done.stdout


def test_shipped_golden_vectors_are_the_oracles() -> None:
    """compat/cli/demo_golden.json is exactly what tests/oracle.py computes today."""
    sys.path.insert(0, str(ROOT / "tests" / "data"))
    try:
        import make_demo_golden
    finally:
        sys.path.pop(0)
    assert make_demo_golden.TARGET.read_text() == make_demo_golden.golden_text()


def test_demo_detects_a_wrong_bias_placement(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's check must be able to fail: add the int32 bias after scaling instead of
    before, in the library, and every layer mismatches."""
    from compat.ops import reference

    real = reference.reference_quant_matmul

    def late_bias(*args, bias=None, **kwargs):  # type: ignore[no-untyped-def]
        y = real(*args, bias=None, **kwargs)
        return y if bias is None or y.dtype == torch.int32 else (y.float() + bias).to(y.dtype)

    monkeypatch.setattr(sys.modules["compat.ops.quant_matmul"], "reference_quant_matmul", late_bias)
    from compat.cli.demo import main_sections

    assert main_sections(seed=0, device="cpu") is False
    out = capsys.readouterr().out
    assert out.count("MISMATCH") >= 6  # the core and checkpoint layers


def test_demo_seed_without_golden_vectors_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from compat.cli import main

    assert main(["demo", "--seed", "5"]) == 2
    assert "shipped for seed 0 only" in capsys.readouterr().err


def test_demo_int8_check_detects_missing_fp19_truncation(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the scale no longer truncated to 19 bits, the int8 layer must mismatch."""
    from compat.ops import encoding

    monkeypatch.setattr(encoding, "_FP19_MASK", 0xFFFFFFFF)
    monkeypatch.setattr("compat.cli.demo.SECTIONS", [("core", "compat.cli._demo_core")])
    from compat.cli.demo import main_sections

    assert main_sections(seed=0, device="cpu") is False
    fc1 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fc1"))
    assert "MISMATCH" in fc1


@pytest.mark.parametrize("device", ["bogus", "meta", "cuda:7"])
def test_demo_bad_device_is_a_usage_error(device: str, capsys: pytest.CaptureFixture[str]) -> None:
    from compat.cli import main

    assert main(["demo", "--device", device]) == 2
    assert "--device" in capsys.readouterr().err
