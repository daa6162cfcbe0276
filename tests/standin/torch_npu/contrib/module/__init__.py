"""Stand-in for torch_npu.contrib.module (upstream imports its classes eagerly)."""

import os

from torch_npu import VARIANT

if VARIANT == "legacy":
    # linear_a8w8_quant.py lives in _legacy/ so that the ``future`` variant has no such
    # module at all (a removed file), not one that fails to import.
    __path__.append(os.path.join(os.path.dirname(__file__), "_legacy"))

from torch_npu.contrib.module.linear_quant import LinearQuant

__all__ = ["LinearQuant"]

if VARIANT == "legacy":
    from torch_npu.contrib.module.linear_a8w8_quant import LinearA8W8Quant  # noqa: F401

    __all__.append("LinearA8W8Quant")
