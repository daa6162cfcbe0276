"""Modules: :class:`LinearQuant` and the deprecated :class:`LinearA8W8Quant` adapter."""

from compat._torchload import ensure_torch

ensure_torch()

from compat.nn.linear_a8w8_quant import LinearA8W8Quant  # noqa: E402
from compat.nn.linear_quant import LinearQuant  # noqa: E402

__all__ = ["LinearA8W8Quant", "LinearQuant"]
