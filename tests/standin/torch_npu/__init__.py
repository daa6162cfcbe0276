"""Stand-in for the torch_npu package (see tests/standin/README.md)."""

from __future__ import annotations

import os
from typing import Any

VARIANT = os.environ.get("TORCH_NPU_STANDIN_VARIANT", "legacy")
if VARIANT == "broken":
    raise ImportError(
        "libhccl.so: cannot open shared object file: No such file or directory (stand-in)"
    )

import torch  # noqa: E402
from torch.utils._pytree import tree_map  # noqa: E402

__version__ = os.environ.get("TORCH_NPU_STANDIN_VERSION", "2.13.0")

if torch._C._get_privateuse1_backend_name() != "npu":
    torch.utils.rename_privateuse1_backend("npu")

standin_calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []


class _NpuTensor(torch.Tensor):
    """A CPU tensor that reports device ``npu:0``."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor) -> _NpuTensor:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined,no-any-return]
            cls,
            elem.shape,
            strides=elem.stride(),
            dtype=elem.dtype,
            device=torch.device("npu", 0),
            requires_grad=False,
        )

    def __init__(self, elem: torch.Tensor) -> None:
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        def unwrap(t: Any) -> Any:
            return t.elem if isinstance(t, _NpuTensor) else t

        def wrap(t: Any) -> Any:
            return _NpuTensor(t) if isinstance(t, torch.Tensor) else t

        return tree_map(wrap, func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {})))


def standin_npu(tensor: torch.Tensor) -> torch.Tensor:
    """Wrap a CPU tensor so that it reports the npu device."""
    return _NpuTensor(tensor)


def _filled(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return _NpuTensor(torch.full(shape, 7, dtype=dtype))


def npu_trans_quant_param(
    scale: torch.Tensor, offset: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor:
    standin_calls.append(("npu_trans_quant_param", (scale, offset), dict(kwargs)))
    if not isinstance(scale, _NpuTensor):  # a CPU scale gives a CPU result (the op would fail)
        return torch.full(tuple(scale.shape), 7, dtype=torch.int64)
    return _filled(tuple(scale.shape), torch.int64)


def npu_format_cast(tensor: torch.Tensor, acl_format: int) -> torch.Tensor:
    standin_calls.append(("npu_format_cast", (tensor, acl_format), {}))
    return tensor


_OLD = __version__.startswith("2.0.")


def npu_quant_matmul(
    x1: torch.Tensor, x2: torch.Tensor, scale: torch.Tensor, *args: Any, **kwargs: Any
) -> torch.Tensor:
    if _OLD and kwargs:
        raise TypeError("npu_quant_matmul() of torch 2.0 builds takes positional arguments only")
    if not _OLD and args:
        raise TypeError("npu_quant_matmul() takes 3 positional arguments")
    standin_calls.append(("npu_quant_matmul", (x1, x2, scale, *args), dict(kwargs)))
    out = args[2] if _OLD and len(args) > 2 else kwargs.get("output_dtype")
    dtype = {
        None: torch.int8,
        "int8": torch.int8,
        "float16": torch.float16,
        "bfloat16": torch.bfloat16,
        "int32": torch.int32,
    }.get(out, out)
    return _filled((*x1.shape[:-1], x2.shape[-1]), dtype)


# Upstream imports torch_npu.contrib (and so torch_npu.contrib.module) while
# ``import torch_npu`` runs (torch_npu/_init/patches/monkey_patches.py); so does the stand-in.
import torch_npu.contrib  # noqa: E402
import torch_npu.npu  # noqa: E402, F401


def _autoload() -> None:
    """torch.backends entry point (the real one initialises the NPU runtime)."""
