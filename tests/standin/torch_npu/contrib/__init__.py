"""Stand-in for torch_npu.contrib: re-exports the module classes like upstream."""

from torch_npu.contrib.module import LinearQuant

__all__ = ["LinearQuant"]

try:
    from torch_npu.contrib.module import LinearA8W8Quant  # noqa: F401
except ImportError:
    pass
else:
    __all__.append("LinearA8W8Quant")
