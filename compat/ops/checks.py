"""Argument checking helpers shared by every layer: every message names the argument,
the value got and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def compiling() -> bool:
    """Whether torch.compile is tracing (``torch.compiler.is_compiling`` is torch >= 2.3)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling()) if is_compiling is not None else False


def eager_values(tensor: torch.Tensor) -> bool:
    """Whether value checks can run on ``tensor`` (not meta, not being traced)."""
    return tensor.device.type != "meta" and not compiling()


def dtype_name(dtype: torch.dtype | None) -> str:
    return "None" if dtype is None else str(dtype)


def allowed(values: Iterable[object]) -> str:
    names = [dtype_name(v) if isinstance(v, torch.dtype) or v is None else repr(v) for v in values]
    return ", ".join(names) if names else "nothing"


def require_tensor(func: str, name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{func}: argument {name!r} must be a torch.Tensor, got {type(value).__name__}"
        )
    return value


def require_dtype(
    func: str,
    name: str,
    tensor: torch.Tensor,
    allowed_dtypes: Iterable[torch.dtype],
    context: str = "",
) -> None:
    allowed_list = list(allowed_dtypes)
    if tensor.dtype not in allowed_list:
        where = f" {context}" if context else ""
        raise TypeError(
            f"{func}: argument {name!r} has dtype {tensor.dtype}; allowed{where}: "
            f"{allowed(allowed_list)}"
        )


def shape_text(shape: tuple[int, ...]) -> str:
    """``(2, 3)``, ``(4,)``, ``()``: a shape as Python writes the tuple."""
    return f"({', '.join(map(str, shape))}{',' if len(shape) == 1 else ''})"


def shape_str(tensor: torch.Tensor) -> str:
    """:func:`shape_text` of a tensor's shape."""
    return shape_text(tuple(tensor.shape))


def require_no_nan(func: str, name: str, tensor: torch.Tensor, why: str) -> None:
    """ValueError if ``tensor`` holds NaN (skipped where values cannot be read: meta
    tensors, or while torch.compile traces)."""
    if eager_values(tensor) and bool(torch.isnan(tensor).any()):
        raise ValueError(f"{func}: argument {name!r} contains NaN; {why}")
