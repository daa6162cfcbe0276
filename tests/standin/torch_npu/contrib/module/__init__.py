"""Stand-in for torch_npu.contrib.module."""

from torch_npu import VARIANT
from torch_npu.contrib.module.linear_quant import LinearQuant

__all__ = ["LinearQuant"]

if VARIANT == "legacy":
    from torch_npu.contrib.module.linear_a8w8_quant import LinearA8W8Quant  # noqa: F401

    __all__.append("LinearA8W8Quant")
