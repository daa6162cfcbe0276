"""What the CPU stand-in's ``torch_npu`` modules contain, all backed by compat's reference.

One builder per module of :data:`compat._stand_in.MODULES`. Every module carries
``compat.upstream.STAND_IN_ATTRIBUTE`` and a module ``__getattr__`` that names any other
attribute as not provided. ``LinearA8W8Quant`` is served through the legacy-import hook
(:func:`compat._legacy_imports.serve_legacy_name`), so each access from user code is
recorded and warned about exactly as on an NPU host. ``LinearQuant`` is looked up on
first access: ``import torch_npu`` can run while ``compat.nn`` itself is being imported
(its backend probe), so building these modules must not import ``compat.nn``.

``import torch_npu`` also gives ``torch.Tensor.npu``, ``torch.nn.Module.npu`` and
``torch.npu`` (as the real package does); here ``.npu()`` keeps everything on the CPU and
returns the tensor or module itself. :func:`undo_patches` takes them away again.
"""

from __future__ import annotations

import dis
import importlib
import sys
import unittest
from collections.abc import Callable
from types import FrameType, ModuleType
from typing import Any

import torch
from torch import nn

from compat import _legacy_imports, _stand_in, upstream
from compat.ops.encoding import trans_quant_param
from compat.ops.quant_matmul import quant_matmul

#: ``torch_npu.npu.get_device_name(0)``: says what it is; ``[:10]`` is "CPU stand-".
DEVICE_NAME = "CPU stand-in for torch_npu (linear-quant-compat reference)"
#: ``torch_npu.__version__`` of the stand-in (a local version label, never a release).
VERSION = "0+linear.quant.compat.cpu.stand.in"

_MISSING = object()
_patched: dict[tuple[object, str], object] = {}


def populate(module: ModuleType) -> None:
    """Fill ``module`` (one of the stand-in's modules, by name)."""
    name = module.__name__
    setattr(module, upstream.STAND_IN_ATTRIBUTE, True)
    module.__doc__ = (
        f"{name}: linear-quant-compat's CPU stand-in (opt-in; see compat.testing). "
        f"Not the real torch_npu."
    )
    provided = _BUILDERS[name](module)
    lazy = {upstream.REPLACEMENT_CLASS: _linear_quant} if name in _WITH_LINEAR_QUANT else {}
    module.__dict__["__getattr__"] = _getattr_for(name, provided, lazy)
    if name in (upstream.CONTRIB, upstream.MODULE, upstream.LEGACY_SUBMODULE):
        _legacy_imports.serve_legacy_name(module)


def _getattr_for(
    module_name: str, provided: list[str], lazy: dict[str, Callable[[], Any]]
) -> Callable[[str], Any]:
    def __getattr__(name: str) -> Any:
        make = lazy.get(name)
        if make is not None:
            return make()
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        what = f"{_stand_in.ONLY_SURFACE}. Here it provides: {', '.join(provided)}"
        if _imports_from(sys._getframe(1)):
            # Python turns an AttributeError here into its own "cannot import name"
            # ImportError, which would drop the explanation; an ImportError goes through
            raise ImportError(
                f"cannot import name {name!r} from {module_name!r}: {what}", name=module_name
            )
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}: {what}")

    return __getattr__


_IMPORT_FROM = dis.opmap["IMPORT_FROM"]


def _imports_from(frame: FrameType | None) -> bool:
    """Whether the first frame above compat's module ``__getattr__`` functions is running
    a ``from module import name`` (the IMPORT_FROM instruction)."""
    while frame is not None and frame.f_code.co_name == "__getattr__":
        frame = frame.f_back
    if frame is None:
        return False
    code, at = frame.f_code.co_code, frame.f_lasti
    return 0 <= at < len(code) and code[at] == _IMPORT_FROM


def _linear_quant() -> type[nn.Module]:
    cls: type[nn.Module] = getattr(
        importlib.import_module(upstream.COMPAT_REPLACEMENT_MODULE), upstream.REPLACEMENT_CLASS
    )
    return cls


#: The modules that serve ``LinearQuant`` (and ``LinearA8W8Quant``, except the last).
_WITH_LINEAR_QUANT = (upstream.CONTRIB, upstream.MODULE, upstream.REPLACEMENT_SUBMODULE)

#: What a builder returns: the names its module provides (for the "not provided" error).
_Built = list[str]


# --- torch_npu ---------------------------------------------------------------------------


def npu_format_cast(tensor: torch.Tensor, acl_format: int) -> torch.Tensor:
    """Returns ``tensor`` itself: an internal format is an NPU memory layout, and the
    stand-in keeps tensors on the CPU, so the values are unchanged."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(
            f"npu_format_cast: argument 'self' must be a torch.Tensor, got {type(tensor).__name__}"
        )
    if isinstance(acl_format, bool) or not isinstance(acl_format, int):
        raise TypeError(
            f"npu_format_cast: argument 'acl_format' must be an int (an ACL format id such "
            f"as 2 for ND or 29 for FRACTAL_NZ), got {type(acl_format).__name__} {acl_format!r}"
        )
    return tensor


def _autoload() -> None:
    """torch's device-backend autoload entry point: nothing to initialise on the CPU."""


def _package(module: ModuleType) -> _Built:
    module.__dict__.update(
        __version__=VERSION,
        npu_quant_matmul=quant_matmul,  # the same signature as upstream's op
        npu_trans_quant_param=trans_quant_param,
        npu_format_cast=npu_format_cast,
        _autoload=_autoload,
    )
    # like the real package, ``import torch_npu`` imports torch_npu.npu and torch_npu.contrib
    # and makes torch.npu, Tensor.npu() and Module.npu() available
    _patch_torch(importlib.import_module(f"{module.__name__}.npu"))
    importlib.import_module(upstream.CONTRIB)
    return [
        "npu_quant_matmul",
        "npu_trans_quant_param",
        "npu_format_cast",
        "npu",
        "contrib",
        "testing",
    ]


# --- torch_npu.npu -------------------------------------------------------------------------


def _check_device(what: str, device: object) -> None:
    ok = device is None or device in (0, "npu", "npu:0")
    if isinstance(device, bool) or not ok:
        raise ValueError(
            f"{what}: device {device!r} is not available: the CPU stand-in for torch_npu has "
            f"one device, npu:0 (index 0), which keeps tensors on the CPU"
        )


def is_available() -> bool:
    """True: the stand-in's one device (the CPU, running compat's reference) is there."""
    return True


def get_device_name(device: object = None) -> str:
    """The stand-in's device name, which says what it is."""
    _check_device("get_device_name", device)
    return DEVICE_NAME


def _npu(module: ModuleType) -> _Built:
    module.__dict__.update(is_available=is_available, get_device_name=get_device_name)
    return ["is_available", "get_device_name"]


# --- torch_npu.contrib, torch_npu.contrib.module and its two submodules ---------------------


def _contrib(module: ModuleType) -> _Built:
    module.__dict__["__all__"] = [upstream.LEGACY_CLASS, upstream.REPLACEMENT_CLASS]
    importlib.import_module(upstream.MODULE)
    return [upstream.LEGACY_CLASS, upstream.REPLACEMENT_CLASS, "module"]


def _contrib_module(module: ModuleType) -> _Built:
    module.__dict__["__all__"] = [upstream.LEGACY_CLASS, upstream.REPLACEMENT_CLASS]
    importlib.import_module(upstream.LEGACY_SUBMODULE)
    importlib.import_module(upstream.REPLACEMENT_SUBMODULE)
    return [
        upstream.LEGACY_CLASS,
        upstream.REPLACEMENT_CLASS,
        upstream.LEGACY_SUBMODULE.rpartition(".")[2],
        upstream.REPLACEMENT_SUBMODULE.rpartition(".")[2],
    ]


def _legacy_submodule(module: ModuleType) -> _Built:
    module.__dict__["__all__"] = [upstream.LEGACY_CLASS]
    return [upstream.LEGACY_CLASS]


def _replacement_submodule(module: ModuleType) -> _Built:
    module.__dict__["__all__"] = [upstream.REPLACEMENT_CLASS]
    return [upstream.REPLACEMENT_CLASS]


# --- torch_npu.testing.testcase ------------------------------------------------------------


def _as_array(value: object, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"assertRtolEqual: {what} must be a tensor, an array or a number, got "
            f"{type(value).__name__}"
        ) from err


class TestCase(unittest.TestCase):
    """``torch_npu.testing.testcase.TestCase`` of the stand-in: a ``unittest.TestCase``
    with ``assertRtolEqual`` and a tensor-aware ``assertEqual``."""

    def assertRtolEqual(
        self,
        x: object,
        y: object,
        prec: float = 1.0e-4,
        prec16: float = 1.0e-3,
        auto_trans_dtype: bool = False,
        message: str | None = None,
    ) -> None:
        """Assert ``x`` and ``y`` have the same shape and dtype and agree elementwise.

        An element agrees when ``|x - y| <= prec`` or ``|x - y| <= prec * max(|x|, |y|)``
        (``prec16`` for float16 and bfloat16); NaNs must sit at the same places and
        infinities must be equal. Every element must agree. ``auto_trans_dtype=True``
        compares values of different dtypes (both are widened to float64).
        """
        a, b = _as_array(x, "x"), _as_array(y, "y")
        prefix = f"{message}: " if message else ""
        if tuple(a.shape) != tuple(b.shape):
            self.fail(f"{prefix}shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.dtype != b.dtype and not auto_trans_dtype:
            self.fail(
                f"{prefix}dtypes differ: {a.dtype} vs {b.dtype} (pass auto_trans_dtype=True "
                f"to compare the values anyway)"
            )
        low = {torch.float16, torch.bfloat16}
        tol = prec16 if a.dtype in low or b.dtype in low else prec
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        nan_a, nan_b = torch.isnan(a64), torch.isnan(b64)
        if not torch.equal(nan_a, nan_b):
            self.fail(f"{prefix}NaNs at different places")
        a64, b64 = a64[~nan_a], b64[~nan_b]
        inf = torch.isinf(a64) | torch.isinf(b64)
        if not torch.equal(a64[inf], b64[inf]):
            self.fail(f"{prefix}infinities differ")
        a64, b64 = a64[~inf], b64[~inf]
        diff = (a64 - b64).abs()
        bound = torch.maximum(a64.abs(), b64.abs()) * tol
        bad = (diff > tol) & (diff > bound)
        if bool(bad.any()):
            worst = int(torch.argmax(diff))
            self.fail(
                f"{prefix}{int(bad.sum())} of {diff.numel()} elements differ by more than "
                f"prec={tol:g} (absolute or relative); largest difference "
                f"{float(diff[worst]):g} ({float(a64[worst]):g} vs {float(b64[worst]):g})"
            )

    def assertEqual(self, first: object, second: object, msg: Any = None) -> None:
        """Tensors compare exactly (values, shape, dtype); anything else as unittest does."""
        if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
            try:
                torch.testing.assert_close(first, second, rtol=0, atol=0, equal_nan=True)
            except AssertionError as err:
                self.fail(self._formatMessage(msg, str(err)))
            return
        super().assertEqual(first, second, msg)


def run_tests() -> None:
    """Run the calling script's tests (``unittest.main``), exiting with its status."""
    unittest.main(module="__main__", argv=sys.argv)


def _testing(module: ModuleType) -> _Built:
    return ["testcase"]


def _testcase(module: ModuleType) -> _Built:
    module.__dict__.update(TestCase=TestCase, run_tests=run_tests)
    return ["TestCase", "run_tests"]


_BUILDERS: dict[str, Callable[[ModuleType], _Built]] = {
    _stand_in.PACKAGE: _package,
    f"{_stand_in.PACKAGE}.npu": _npu,
    upstream.CONTRIB: _contrib,
    upstream.MODULE: _contrib_module,
    upstream.LEGACY_SUBMODULE: _legacy_submodule,
    upstream.REPLACEMENT_SUBMODULE: _replacement_submodule,
    f"{_stand_in.PACKAGE}.testing": _testing,
    f"{_stand_in.PACKAGE}.testing.testcase": _testcase,
}
assert set(_BUILDERS) == set(_stand_in.MODULES), "one builder per stand-in module"


# --- torch.Tensor.npu, torch.nn.Module.npu, torch.npu ---------------------------------------


def _tensor_npu(
    self: torch.Tensor,
    device: object = None,
    non_blocking: bool = False,
    memory_format: torch.memory_format = torch.preserve_format,
) -> torch.Tensor:
    """Stand-in ``Tensor.npu()``: the tensor stays on the CPU; returns it unchanged."""
    _check_device("Tensor.npu", device)
    return self


def _module_npu(self: nn.Module, device: object = None) -> nn.Module:
    """Stand-in ``Module.npu()``: the parameters stay on the CPU; returns the module."""
    _check_device("Module.npu", device)
    return self


def _patch(owner: object, name: str, value: object) -> None:
    key = (owner, name)
    if key not in _patched:
        namespace = owner.__dict__ if isinstance(owner, type) else vars(owner)
        _patched[key] = namespace.get(name, _MISSING)
    setattr(owner, name, value)


def _patch_torch(npu: ModuleType) -> None:
    _patch(torch.Tensor, "npu", _tensor_npu)
    _patch(nn.Module, "npu", _module_npu)
    _patch(torch, "npu", npu)


def undo_patches() -> None:
    """Restore ``torch.Tensor.npu``, ``torch.nn.Module.npu`` and ``torch.npu``."""
    for (owner, name), old in reversed(list(_patched.items())):
        if old is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, old)
    _patched.clear()
