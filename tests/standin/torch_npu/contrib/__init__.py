"""Stand-in for torch_npu.contrib: re-exports the module classes like upstream."""

from torch_npu import VARIANT
from torch_npu.contrib.module import LinearQuant

__all__ = ["LinearQuant"]

if VARIANT == "legacy":
    from torch_npu.contrib.module import LinearA8W8Quant  # noqa: F401

    __all__.append("LinearA8W8Quant")
