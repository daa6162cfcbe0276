"""compat.testing's CPU stand-in for torch_npu: off by default, on by one of three switches,
and unchanged legacy code (tests/legacy_code/) runs under it against the independent oracle."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
import unittest
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import oracle
import pytest
import torch
from conftest import ROOT, TESTS, as_numpy, python_env

import compat
from compat import testing

LEGACY = TESTS / "legacy_code"
VENDOR = LEGACY / "vendor_example.py"
UPSTREAM_STYLE = LEGACY / "test_linear_a8w8_quant_upstream_style.py"
GRAPH = LEGACY / "graph_mode.py"
WARNING = compat.LinearA8W8QuantDeprecationWarning
VENDOR_IMPORT_LINE = 6  # from torch_npu.contrib.module import LinearA8W8Quant
VENDOR_CONSTRUCT_LINE = 16  # model = LinearA8W8Quant(...)
UPSTREAM_IMPORT_LINE = 11

# torch's own inductor import warns about torch.jit.script_method (torch about itself)
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)


def run(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    standin: str | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python *args`` in a fresh interpreter of this venv, stand-in variable unset unless
    ``env`` sets it; ``standin`` puts tests/standin (a test *real* torch_npu) on the path."""
    return subprocess.run(
        [sys.executable, *args],
        env=python_env(standin=standin, env=env),
        cwd=str(cwd or ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )


ON = {testing.VAR: "cpu"}


def _json_line(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def stand_in() -> Iterator[testing.StandInStatus]:
    assert "torch_npu" not in sys.modules
    with testing.torch_npu_stand_in() as status:
        yield status
    assert "torch_npu" not in sys.modules


def _vendor_oracle(g: dict[str, Any]) -> np.ndarray:
    return oracle.quant_matmul(
        g["x1"].numpy(),
        g["x2"].numpy().T,
        g["scale"].numpy(),
        offset=g["offset"].numpy(),
        bias=g["bias"].numpy(),
        bias_kind="int32",
        out="int8",
    )


# --- off by default --------------------------------------------------------------------------

PROBE_IMPORT = """\
import json, importlib.util
import torch
try:
    import torch_npu
except ImportError as err:
    print(json.dumps([type(err).__name__, err.name, str(err), importlib.util.find_spec("torch_npu") is None,
                      hasattr(torch.Tensor, "npu")]))
else:
    print(json.dumps(["imported", torch_npu.__name__]))
"""


@pytest.mark.parametrize("value", [None, "", "gpu"])
def test_while_off_import_torch_npu_raises_exactly_as_without_the_library(
    value: str | None,
) -> None:
    env = {} if value is None else {testing.VAR: value}
    hooked = run(["-c", PROBE_IMPORT], env=env)
    plain = run(["-c", PROBE_IMPORT], env={**env, "LINEAR_QUANT_COMPAT_DISABLE": "1"})
    got, without = _json_line(hooked), _json_line(plain)
    assert got == ["ModuleNotFoundError", "torch_npu", "No module named 'torch_npu'", True, False]
    assert got == without
    if value == "gpu":  # a wrong value says so once, naming the variable and what is allowed
        assert f"{testing.VAR}='gpu' is not a valid value (allowed: 'cpu'" in hooked.stderr
        assert hooked.stderr.count(testing.VAR) == 1
    else:
        assert hooked.stderr == ""


def test_status_off_names_the_three_switches() -> None:
    status = testing.stand_in_status()
    assert status.active is False and status.requested_by == ()
    for switch in (testing.VAR, "--compat-torch-npu=cpu", "compat_torch_npu", "torch_npu_stand_in"):
        assert switch in status.reason


# --- the context manager ---------------------------------------------------------------------


def test_context_manager_serves_the_surface_and_restores_everything() -> None:
    assert not hasattr(torch.Tensor, "npu") and not hasattr(torch.nn.Module, "npu")
    torch_npu_attribute = getattr(torch, "npu", None)
    with testing.torch_npu_stand_in() as status:
        assert status.active and status.requested_by == ("compat.testing.torch_npu_stand_in()",)
        import torch_npu

        assert torch_npu.npu.is_available() is True
        assert "CPU stand-in" in torch_npu.npu.get_device_name(0)
        assert torch.npu is torch_npu.npu
        t = torch.arange(6, dtype=torch.int8).reshape(2, 3)
        assert t.npu() is t and t.npu(0) is t and t.npu("npu:0") is t
        m = torch.nn.Linear(2, 2)
        assert m.npu() is m and m.weight.device.type == "cpu"
        cast = torch_npu.npu_format_cast(t, 29)
        assert torch.equal(cast, torch.arange(6, dtype=torch.int8).reshape(2, 3))
        with pytest.raises(ValueError, match=r"get_device_name.*'npu:1'"):
            torch_npu.npu.get_device_name("npu:1")
        with pytest.raises(ValueError, match=r"Tensor.npu.*1"):
            t.npu(1)
    assert "torch_npu" not in sys.modules
    assert not hasattr(torch.Tensor, "npu") and not hasattr(torch.nn.Module, "npu")
    assert getattr(torch, "npu", None) is torch_npu_attribute
    with pytest.raises(ModuleNotFoundError, match="No module named 'torch_npu'"):
        import torch_npu


def test_nested_and_decorated_use_keep_it_on_until_the_last_exit() -> None:
    @testing.torch_npu_stand_in
    def bare() -> bool:
        return testing.stand_in_status().active

    @testing.torch_npu_stand_in()
    def called() -> bool:
        return testing.stand_in_status().active

    assert bare() and called() and not testing.stand_in_status().active
    with testing.torch_npu_stand_in():
        with testing.torch_npu_stand_in():
            import torch_npu
        assert sys.modules["torch_npu"] is torch_npu
    assert "torch_npu" not in sys.modules


def test_anything_else_of_torch_npu_is_a_clear_error(stand_in: testing.StandInStatus) -> None:
    import torch_npu

    with pytest.raises(AttributeError, match=r"'npu_rotary_mul'.*only the quantized-linear"):
        torch_npu.npu_rotary_mul  # noqa: B018
    with pytest.raises(AttributeError, match=r"'device_count'.*only the quantized-linear"):
        torch_npu.npu.device_count  # noqa: B018
    with pytest.raises(ModuleNotFoundError, match=r"'torch_npu.optim'.*only the quantized-linear"):
        import torch_npu.optim
    with pytest.raises(ImportError, match=r"'LinearWeightQuant'.*only the quantized-linear"):
        from torch_npu.contrib.module import LinearWeightQuant  # noqa: F401
    with pytest.raises(ImportError, match=r"'npu_rotary_mul' from 'torch_npu'.*only the quantized"):
        from torch_npu import npu_rotary_mul  # noqa: F401
    assert not hasattr(torch_npu.contrib.module, "LinearWeightQuant")  # still AttributeError


def test_ops_compute_compat_reference_values(stand_in: testing.StandInStatus) -> None:
    import torch_npu

    g = torch.Generator().manual_seed(3)
    x1 = torch.randint(-128, 128, (4, 40), dtype=torch.int8, generator=g)
    x2 = torch.randint(-128, 128, (40, 6), dtype=torch.int8, generator=g)
    scale = torch.rand(6, generator=g) * 1e-3
    offset = (torch.rand(6, generator=g) - 0.5) * 20
    q = torch_npu.npu_trans_quant_param(scale, offset)
    np.testing.assert_array_equal(q.numpy(), oracle.encode(scale.numpy(), offset.numpy()))
    y = torch_npu.npu_quant_matmul(x1, x2, q)
    exp = oracle.quant_matmul(x1.numpy(), x2.numpy(), q.numpy(), out="int8", scale_kind="int64")
    np.testing.assert_array_equal(y.numpy(), exp)
    y16 = torch_npu.npu_quant_matmul(x1, x2, scale, output_dtype=torch.float16)
    np.testing.assert_array_equal(
        y16.numpy(), oracle.quant_matmul(x1.numpy(), x2.numpy(), scale.numpy(), out="float16")
    )


def _rtol(x: object, y: object, *args: Any, **kwargs: Any) -> str | None:
    """assertRtolEqual's failure message, or None when it passes."""
    from torch_npu.testing.testcase import TestCase

    case = type("Case", (TestCase,), {"runTest": lambda self: None})()
    try:
        case.assertRtolEqual(x, y, *args, **kwargs)
    except AssertionError as err:
        return str(err)
    return None


def test_assert_rtol_equal_passes_within_prec_and_fails_beyond(
    stand_in: testing.StandInStatus,
) -> None:
    from torch_npu.testing.testcase import TestCase, run_tests

    assert issubclass(TestCase, unittest.TestCase) and callable(run_tests)
    a = torch.tensor([1000.0, 1.0, 0.0, -5.0])
    assert _rtol(a, a.clone(), 0.001) is None
    assert _rtol(a, a + torch.tensor([0.9, 0.0009, 0.0009, 0.0]), 0.001) is None  # rel, abs
    msg = _rtol(a, a + torch.tensor([0.0, 0.0, 0.0, 0.01]), 0.001)
    assert msg is not None and "1 of 4 elements" in msg
    assert "shapes differ" in (_rtol(a, a[:3]) or "")
    assert "dtypes differ" in (_rtol(a, a.double()) or "")
    assert _rtol(a, a.double(), auto_trans_dtype=True) is None
    nan = torch.tensor([float("nan"), 1.0])
    assert _rtol(nan, nan.clone()) is None
    assert "NaNs" in (_rtol(nan, torch.tensor([1.0, 1.0])) or "")
    assert "infinities" in (
        _rtol(torch.tensor([float("inf")]), torch.tensor([-float("inf")])) or ""
    )
    i8 = torch.tensor([3, -4], dtype=torch.int8)
    assert _rtol(i8, i8.clone(), 0.001) is None
    assert _rtol(i8, torch.tensor([3, -3], dtype=torch.int8), 0.001) is not None
    h = torch.tensor([100.0], dtype=torch.float16)
    assert _rtol(h, torch.tensor([100.06], dtype=torch.float16)) is None  # prec16 = 1e-3 rel
    assert _rtol(h, torch.tensor([100.5], dtype=torch.float16)) is not None


# --- the vendor documentation's example ------------------------------------------------------


def test_vendor_example_runs_unchanged_and_equals_the_oracle(
    stand_in: testing.StandInStatus,
) -> None:
    with pytest.warns(WARNING) as record:
        g = runpy.run_path(str(VENDOR), run_name="__main__")
    out = g["output"]
    assert out.device.type == "cpu" and out.dtype == torch.int8 and out.shape == (1, 128)
    np.testing.assert_array_equal(out.numpy(), _vendor_oracle(g))
    sites = {(Path(w.filename), w.lineno) for w in record if w.category is WARNING}
    assert sites == {(VENDOR, VENDOR_IMPORT_LINE), (VENDOR, VENDOR_CONSTRUCT_LINE)}
    assert all("LinearQuant" in str(w.message) for w in record)
    assert isinstance(g["model"], compat.LinearQuant)


def test_vendor_example_runs_as_a_script_with_the_variable() -> None:
    proc = run([str(VENDOR)], env=ON)
    assert proc.returncode == 0, proc.stderr
    device = "CPU stand-in for torch_npu (linear-quant-compat reference)"
    assert proc.stdout.strip() == f"{device} (1, 128) torch.int8"
    assert f"{VENDOR}:{VENDOR_IMPORT_LINE}: LinearA8W8QuantDeprecationWarning" in proc.stderr
    assert "LinearQuant(" in proc.stderr


SAVE_GLOBALS = """\
import runpy, sys, torch
g = runpy.run_path(sys.argv[1], run_name="__main__")
torch.save({k: g[k] for k in ("x1", "x2", "scale", "offset", "bias", "output")}, sys.argv[2])
"""


def test_vendor_example_script_output_equals_the_oracle(tmp_path: Path) -> None:
    saved = tmp_path / "run.pt"
    proc = run(["-c", SAVE_GLOBALS, str(VENDOR), str(saved)], env=ON)
    assert proc.returncode == 0, proc.stderr
    g = torch.load(saved, weights_only=True)
    np.testing.assert_array_equal(g["output"].numpy(), _vendor_oracle(g))


def test_warnings_as_errors_fail_exactly_at_the_legacy_import_line() -> None:
    proc = run(["-W", "error::compat.LinearA8W8QuantDeprecationWarning", str(VENDOR)], env=ON)
    assert proc.returncode == 1
    frames = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("File ")]
    # the script's one frame is the legacy line; the frames below it are compat's own
    assert frames[0] == f'File "{VENDOR}", line {VENDOR_IMPORT_LINE}, in <module>'
    assert all(f'File "{ROOT / "compat"}' in frame for frame in frames[1:])
    assert (
        proc.stderr.rstrip()
        .splitlines()[-1]
        .startswith("compat.LinearA8W8QuantDeprecationWarning:")
    )


# --- an upstream-style unittest file, unchanged ----------------------------------------------


@pytest.fixture
def legacy_suite(tmp_path: Path) -> Path:
    """A legacy project holding only the upstream-style test file."""
    shutil.copy(UPSTREAM_STYLE, tmp_path / UPSTREAM_STYLE.name)
    return tmp_path


def _pytest(project: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return run(["-m", "pytest", "-p", "no:cacheprovider", "-rA", *args], env=env, cwd=project)


def _outcomes(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """test name -> outcome, from the ``-rA`` short summary."""
    outcomes = {}
    for line in proc.stdout.splitlines():
        outcome, _, rest = line.partition(" ")
        if outcome in ("PASSED", "XFAIL", "FAILED", "SKIPPED", "ERROR", "XPASS"):
            outcomes[rest.split("::")[-1].split(" ")[0]] = outcome
    return outcomes


EXPECTED = {
    "test_npu_linear_a8w8_quant_int8": "PASSED",
    "test_npu_linear_a8w8_quant_float16": "PASSED",
    "test_npu_linear_a8w8_quant_int32_output": "XFAIL",
    "test_npu_linear_a8w8_quant_float16_scale": "XFAIL",
}


@pytest.mark.parametrize("switch", ["option", "ini", "variable"])
def test_upstream_style_file_runs_under_pytest(switch: str, legacy_suite: Path) -> None:
    args: list[str] = []
    env: dict[str, str] = {}
    if switch == "option":
        args = ["--compat-torch-npu=cpu"]
    elif switch == "ini":
        (legacy_suite / "pytest.ini").write_text("[pytest]\ncompat_torch_npu = cpu\n")
    else:
        env = ON
    proc = _pytest(legacy_suite, *args, "--compat-report", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _outcomes(proc) == EXPECTED  # the tests ran: none skipped on the device name
    assert "linear-quant-compat: torch_npu stand-in active: requested by" in proc.stdout
    assert f"{UPSTREAM_STYLE.name}:{UPSTREAM_IMPORT_LINE}" in proc.stdout  # the report's site


def test_upstream_style_file_under_xdist_workers(legacy_suite: Path) -> None:
    proc = _pytest(legacy_suite, "-n", "2", "--compat-torch-npu=cpu", "--compat-report")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _outcomes(proc) == EXPECTED
    assert "4 deprecated LinearA8W8Quant call sites" in proc.stdout  # merged from workers
    assert f"{UPSTREAM_STYLE.name}:{UPSTREAM_IMPORT_LINE}: imported as" in proc.stdout


def test_upstream_style_file_runs_in_place_with_its_folders_ini() -> None:
    # tests/legacy_code/pytest.ini (compat_torch_npu = cpu) is the configuration here
    proc = run(["-m", "pytest", "-rA", str(UPSTREAM_STYLE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _outcomes(proc) == EXPECTED
    assert "requested by pytest ini compat_torch_npu = cpu" in proc.stdout


def test_upstream_style_file_runs_as_a_script(legacy_suite: Path) -> None:
    proc = run([UPSTREAM_STYLE.name, "-v"], env=ON, cwd=legacy_suite)
    assert proc.returncode == 0, proc.stderr
    assert "Ran 4 tests" in proc.stderr and "OK (expected failures=2)" in proc.stderr
    for name in EXPECTED:
        assert name in proc.stderr


def test_upstream_style_file_under_warnings_as_errors_and_strict(legacy_suite: Path) -> None:
    proc = _pytest(
        legacy_suite,
        "--compat-torch-npu=cpu",
        "-W",
        "error::compat.LinearA8W8QuantDeprecationWarning",
    )
    assert proc.returncode == 2, proc.stdout  # a collection error, at the legacy import
    assert f"{UPSTREAM_STYLE.name}:{UPSTREAM_IMPORT_LINE}: in <module>" in proc.stdout
    assert "LinearA8W8QuantDeprecationWarning" in proc.stdout
    strict = _pytest(legacy_suite, "--compat-torch-npu=cpu", "--compat-strict")
    assert strict.returncode == 1, strict.stdout
    assert _outcomes(strict) == EXPECTED


@pytest.mark.parametrize(
    ("args", "ini", "fragments"),
    [
        (["--compat-torch-npu=gpu"], None, ["--compat-torch-npu", "'gpu'", "'cpu'"]),
        ([], "compat_torch_npu = npu\n", ["compat_torch_npu", "'npu'", "'cpu'"]),
    ],
)
def test_a_bad_switch_value_is_a_usage_error(
    args: list[str], ini: str | None, fragments: list[str], legacy_suite: Path
) -> None:
    if ini is not None:
        (legacy_suite / "pytest.ini").write_text("[pytest]\n" + ini)
    proc = _pytest(legacy_suite, *args)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


# --- graph-mode tooling: isinstance against upstream's module paths --------------------------


def _graph_model() -> torch.nn.Module:
    g = torch.Generator().manual_seed(5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WARNING)
        from torch_npu.contrib.module import LinearA8W8Quant, LinearQuant

        model = torch.nn.Sequential(
            LinearA8W8Quant(48, 16, bias=True, offset=True),
            torch.nn.Identity(),
        )
        lq = LinearQuant(48, 16, bias=True, output_dtype=torch.float16)
    model.add_module("lq", lq)
    a8w8 = model[0]
    with torch.no_grad():
        for m in (a8w8, lq):
            m.weight.copy_(torch.randint(-128, 128, (16, 48), dtype=torch.int8, generator=g))
            m.scale.copy_(torch.rand(16, generator=g) * 1e-3)
            m.bias.copy_(torch.randint(-1000, 1000, (16,), dtype=torch.int32, generator=g))
        a8w8.offset.copy_((torch.rand(16, generator=g) - 0.5) * 20)
    return model


def test_graph_mode_pass_processes_compat_modules_then_compiles(
    stand_in: testing.StandInStatus,
) -> None:
    graph = runpy.run_path(str(GRAPH))
    model = _graph_model()
    a8w8, lq = model[0], model.lq
    x = torch.randint(
        -128, 128, (3, 48), dtype=torch.int8, generator=torch.Generator().manual_seed(1)
    )
    exp_a8w8 = oracle.quant_matmul(
        x.numpy(),
        a8w8.weight.numpy().T,
        a8w8.scale.detach().numpy(),
        offset=a8w8.offset.detach().numpy(),
        bias=a8w8.bias.detach().numpy(),
        bias_kind="int32",
        out="int8",
    )
    exp_lq = oracle.quant_matmul(
        x.numpy(),
        lq.weight.numpy().T,
        lq.scale.detach().numpy(),
        bias=lq.bias.detach().numpy(),
        bias_kind="int32",
        out="float16",
    )
    weights = [m.weight.detach().clone() for m in (a8w8, lq)]
    with pytest.warns(WARNING) as record:  # the pass names the legacy class: a legacy site
        done = graph["use_internal_format_weight"](model)
    assert done == [("0", "LinearA8W8Quant"), ("lq", "LinearQuant")]
    assert [(Path(w.filename), w.lineno) for w in record] == [(GRAPH, 12)]
    assert a8w8.scale.dtype == torch.int64  # the pass folded the offset into the scale
    assert all(torch.equal(m.weight, w) for m, w in zip((a8w8, lq), weights, strict=True))
    torch._dynamo.reset()
    try:
        run_a8w8 = torch.compile(a8w8, backend="inductor")
        run_lq = torch.compile(lq, backend="inductor")
        np.testing.assert_array_equal(run_a8w8(x).numpy(), exp_a8w8)
        np.testing.assert_array_equal(as_numpy(run_lq(x)), exp_lq)
    finally:
        torch._dynamo.reset()


GRAPH_REAL = """\
import json, runpy, sys, warnings
import torch, compat, compat.testing
import torch_npu
warnings.simplefilter("ignore", compat.LinearA8W8QuantDeprecationWarning)
from torch_npu.contrib.module import LinearA8W8Quant
model = torch.nn.Sequential(LinearA8W8Quant(8, 4, offset=True), compat.LinearQuant(8, 4))
graph = runpy.run_path(sys.argv[1])
done = graph["use_internal_format_weight"](model)
print(json.dumps({
    "done": done,
    "classes": [type(m).__module__ + "." + type(m).__qualname__ for m in model],
    "calls": [name for name, _, _ in torch_npu.standin_calls],
    "stand_in": compat.testing.stand_in_status().active,
}))
"""


@pytest.mark.parametrize("device", ["Ascend910B1", "Ascend310P3"])
def test_graph_mode_pass_processes_compat_modules_with_a_real_torch_npu(device: str) -> None:
    proc = run(
        ["-c", GRAPH_REAL, str(GRAPH)],
        standin="legacy",
        env={**ON, "TORCH_NPU_STANDIN_DEVICE": device},
    )
    got = _json_line(proc)
    assert got["done"] == [["0", "LinearA8W8Quant"], ["1", "LinearQuant"]]
    assert got["classes"] == [
        "compat.nn.linear_a8w8_quant.LinearA8W8Quant",
        "compat.nn.linear_quant.LinearQuant",
    ]
    extra = ["npu_format_cast"] if device.startswith("Ascend310P") else []
    assert got["calls"] == ["npu_trans_quant_param", *extra, "npu_format_cast"]
    assert got["stand_in"] is False  # a real torch_npu that imports always wins


# --- a real but broken torch_npu, and doctor -------------------------------------------------

DOCTOR = ["-m", "compat", "doctor", "--json"]


def _doctor(**kwargs: Any) -> dict[str, Any]:
    proc = run(DOCTOR, **kwargs)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)["torch_npu_stand_in"]
    return report


def test_doctor_reports_whether_the_stand_in_is_active_and_why() -> None:
    off = _doctor()
    assert off["active"] is False and "not requested" in off["reason"]
    on = _doctor(env=ON)
    assert on["active"] is True and "no real torch_npu is installed" in on["reason"]
    assert on["requested_by"] == [testing.VAR + "=cpu"]
    real = _doctor(env=ON, standin="legacy")
    assert real["active"] is False
    assert "a real torch_npu imports: the stand-in never replaces it" in real["reason"]
    broken = _doctor(env=ON, standin="broken")
    assert broken["active"] is True and "fails to import" in broken["reason"]
    broken_off = _doctor(standin="broken")
    assert broken_off["active"] is False
    text = run(["-m", "compat", "doctor"], env=ON)
    assert "stand-in        active: requested by" in text.stdout


BROKEN = """\
import json, torch, compat.testing
with compat.testing.torch_npu_stand_in():
    try:
        import torch_npu
        print(json.dumps(["imported", torch_npu.__name__, compat.testing.stand_in_status().active,
                          hasattr(torch_npu.contrib.module, "LinearA8W8Quant")]))
    except ImportError as err:
        print(json.dumps(["ImportError", str(err), getattr(err, "__notes__", [])]))
"""


def test_a_broken_real_torch_npu_keeps_it_off_unless_the_variable_is_set() -> None:
    # the variable: the stand-in takes over, even from torch's own backend autoload
    on = run(["-c", BROKEN], standin="broken", env=ON)
    assert _json_line(on) == ["imported", "torch_npu", True, True]
    assert "fails to import" in on.stderr and "stand-in" in on.stderr
    # only the context manager (autoload off, as a broken wheel needs): it says so, stays off
    off = run(["-c", BROKEN], standin="broken", env={"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    kind, message, notes = _json_line(off)
    assert kind == "ImportError" and "libhccl.so" in message
    assert any("stand-in" in note and testing.VAR in note for note in notes), notes
    assert "stand-in" in off.stderr


def test_the_variable_set_imports_nothing_at_start_up_only_on_import_torch_npu() -> None:
    code = "import json, sys\nprint(json.dumps(sorted(sys.modules)))"
    unset = _json_line(run(["-c", code]))
    on = _json_line(run(["-c", code], env=ON))
    assert on == unset and "compat" not in on and "torch" not in on


def test_the_docs_quote_the_stand_ins_own_names(stand_in: testing.StandInStatus) -> None:
    import torch_npu

    migration = " ".join((ROOT / "docs" / "migration.md").read_text().split())
    for text in (torch_npu.npu.get_device_name(), torch_npu.__version__, testing.VAR):
        assert f'"{text}"' in migration or f"`{text}" in migration, text
    assert torch_npu.npu.get_device_name()[:10] == "CPU stand-"
    assert "CPU stand-in for torch_npu (linear-quant-compat reference)" in " ".join(
        (ROOT / "docs" / "ci.md").read_text().split()
    )
