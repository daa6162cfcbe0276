"""torch_npu detection and dispatch, with the stand-in package in fresh interpreters."""

from __future__ import annotations

import json

import pytest
from conftest import run_python

DISPATCH = r"""
import json, torch, compat, torch_npu
from compat.ops import backend
npu = torch_npu.standin_npu
x1 = npu(torch.ones(2, 4, dtype=torch.int8)); w = npu(torch.ones(3, 4, dtype=torch.int8))
scale = npu(torch.full((3,), 0.5)); bias = npu(torch.ones(3, dtype=torch.int32))
out = compat.quant_matmul(x1, w.t(), scale, bias=bias, output_dtype=torch.float16)
name, args, kwargs = torch_npu.standin_calls[-1]
cpu = compat.quant_matmul(torch.ones(2, 4, dtype=torch.int8), torch.ones(4, 3, dtype=torch.int8),
                          torch.full((3,), 0.5), output_dtype=torch.float16)
q = compat.trans_quant_param(npu(torch.ones(3)), npu(torch.ones(3)))
m = compat.LinearQuant(4, 3, output_dtype=torch.float16)
print(json.dumps({
    "status": backend.npu_status().state, "version": str(backend.npu_status().version),
    "call": name, "args": [str(a.dtype) if hasattr(a, "dtype") else repr(a) for a in args],
    "kwargs": {k: (str(v.dtype) if hasattr(v, "dtype") else repr(v)) for k, v in kwargs.items()},
    "out_device": str(out.device), "out_dtype": str(out.dtype), "out_value": out.elem.tolist(),
    "x2_is_w_t": args[1].elem.data_ptr() == w.elem.data_ptr(),
    "cpu_calls": len([c for c in torch_npu.standin_calls if c[0] == "npu_quant_matmul"]),
    "cpu_value": cpu.tolist(), "tqp_call": torch_npu.standin_calls[-1][0], "tqp_device": str(q.device),
    "subclass": issubclass(compat.LinearQuant, torch_npu.contrib.module.LinearQuant),
    "backend_npu": backend.active_backend("npu"), "backend_cpu": backend.active_backend("cpu"),
}))
"""


def _json(done) -> dict:  # type: ignore[no-untyped-def]
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_dispatch_to_torch_npu() -> None:
    r = _json(run_python(DISPATCH, standin="legacy"))
    assert r["status"] == "available" and r["version"] == "2.13.0"
    assert r["call"] == "npu_quant_matmul"
    assert r["args"] == ["torch.int8", "torch.int8", "torch.float32"]
    assert r["kwargs"] == {
        "offset": "None",
        "pertoken_scale": "None",
        "bias": "torch.int32",
        "output_dtype": "torch.float16",
    }
    assert r["x2_is_w_t"] is True
    assert r["out_device"] == "npu:0" and r["out_dtype"] == "torch.float16"
    assert r["out_value"] == [[7.0] * 3] * 2  # the stand-in's marker value: it really ran
    assert r["cpu_calls"] == 1  # CPU tensors never reach torch_npu
    assert r["cpu_value"] == [[2.0] * 3] * 2
    assert r["tqp_call"] == "npu_trans_quant_param" and r["tqp_device"] == "npu:0"
    assert r["subclass"] is True
    assert r["backend_npu"] == "torch_npu" and r["backend_cpu"] == "reference"


def test_version_gating_torch20_build_takes_string_output_dtype() -> None:
    code = r"""
import torch, compat, torch_npu
npu = torch_npu.standin_npu
x1 = npu(torch.ones(2, 4, dtype=torch.int8)); x2 = npu(torch.ones(4, 3, dtype=torch.int8))
out = compat.quant_matmul(x1, x2, npu(torch.ones(3)), output_dtype=torch.bfloat16)
name, args, kwargs = torch_npu.standin_calls[-1]
print(args[3:], kwargs, out.dtype)
try:
    compat.quant_matmul(x1, x2, npu(torch.ones(3)), pertoken_scale=npu(torch.ones(2)), output_dtype=torch.bfloat16)
except NotImplementedError as e:
    print("NIE", e)
"""
    done = run_python(code, standin="legacy", env={"TORCH_NPU_STANDIN_VERSION": "2.0.1"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "(None, None, 'bfloat16') {} torch.bfloat16"
    assert lines[1].startswith("NIE") and "2.0.1" in lines[1] and "pertoken_scale" in lines[1]


def test_absent_torch_npu_uses_reference_and_fabricates_nothing() -> None:
    code = r"""
import sys, compat, torch
from compat.ops import backend
m = compat.LinearQuant(4, 3)
print(backend.npu_status().state, "torch_npu" in sys.modules, compat.LinearQuant.__mro__[1].__name__)
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["absent", "False", "Module"]


def test_broken_install_falls_back_and_import_compat_still_works() -> None:
    # ``from compat import ...`` imports torch with autoload made tolerant, so the plain
    # ``import torch`` that follows finds it already imported.
    code = r"""
from compat import quant_matmul
import compat, torch
from compat.ops import backend
s = backend.npu_status()
y = compat.quant_matmul(torch.ones(1, 2, dtype=torch.int8), torch.ones(2, 1, dtype=torch.int8), torch.ones(1), output_dtype=torch.int32)
print(s.state, y.item(), backend.active_backend("cpu"))
print(s.reason)
"""
    done = run_python(code, standin="broken")
    assert done.returncode == 0, done.stderr
    first, reason = done.stdout.strip().splitlines()
    assert first == "broken 2 reference"
    assert "libhccl.so" in reason


def test_broken_install_breaks_plain_import_torch() -> None:
    """The environment compat protects against: torch's own autoload raises."""
    done = run_python("import torch", standin="broken")
    assert done.returncode != 0 and "TORCH_DEVICE_BACKEND_AUTOLOAD" in done.stderr


def test_compat_after_torch_with_autoload_disabled() -> None:
    code = "import torch, compat\nfrom compat.ops import backend\nprint(backend.npu_status().state)"
    done = run_python(code, standin="broken", env={"TORCH_DEVICE_BACKEND_AUTOLOAD": "0"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "broken"


def test_autoload_env_is_restored() -> None:
    code = "import os, compat, torch\ncompat.LinearQuant\nprint(os.environ.get('TORCH_DEVICE_BACKEND_AUTOLOAD'))"
    done = run_python(code, standin="legacy")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"


@pytest.mark.parametrize("variant", ["legacy", "future"])
def test_working_install_is_autoloaded(variant: str) -> None:
    """With a working torch_npu, compat's import still runs the autoload entry point."""
    code = "import sys, compat\ncompat.LinearQuant\nprint('torch_npu' in sys.modules)"
    done = run_python(code, standin=variant)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


def test_import_compat_does_not_import_torch() -> None:
    done = run_python("import sys, compat\nprint('torch' in sys.modules, compat.__version__)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0.1.0"]


@pytest.mark.parametrize(
    ("version", "string_form"),
    [
        ("2.0.1", True),
        ("2.0.0.post3", True),
        ("2.1.0rc1", False),
        ("2.1.0.post11", False),
        ("2.13.0", False),
    ],
)
def test_string_output_dtype_gate(version: str, string_form: bool) -> None:
    from packaging.version import Version

    from compat.ops.backend import NpuStatus

    assert NpuStatus("available", version=Version(version)).string_output_dtype is string_form
