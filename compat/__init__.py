"""linear-quant-compat: keep torch_npu's deprecated ``LinearA8W8Quant`` working.

Public names are resolved lazily (PEP 562) so that ``import compat`` does not import
torch: the start-up hook and ``python -m compat doctor`` depend on that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from compat._version import __version__ as __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs (explicit re-exports)
    from compat._deprecation import (
        LinearA8W8QuantDeprecationWarning as LinearA8W8QuantDeprecationWarning,
    )
    from compat._legacy_imports import install_legacy_imports as install_legacy_imports
    from compat.checkpoint.legacy import load_legacy as load_legacy
    from compat.checkpoint.upgrade import UpgradeReport as UpgradeReport
    from compat.checkpoint.upgrade import upgrade_report as upgrade_report
    from compat.checkpoint.upgrade import upgrade_state_dict as upgrade_state_dict
    from compat.formats.errors import CheckpointError as CheckpointError
    from compat.nn.convert import convert_model as convert_model
    from compat.nn.linear_a8w8_quant import LinearA8W8Quant as LinearA8W8Quant
    from compat.nn.linear_a8w8_quant import replacement_kwargs as replacement_kwargs
    from compat.nn.linear_quant import LinearQuant as LinearQuant
    from compat.ops.encoding import decode_quant_param as decode_quant_param
    from compat.ops.encoding import trans_quant_param as trans_quant_param
    from compat.ops.quant_matmul import quant_matmul as quant_matmul

# public name -> module that defines it: the one list of compat's public API
_EXPORTS: dict[str, str] = {
    "quant_matmul": "compat.ops.quant_matmul",
    "trans_quant_param": "compat.ops.encoding",
    "decode_quant_param": "compat.ops.encoding",
    "LinearQuant": "compat.nn.linear_quant",
    "LinearA8W8Quant": "compat.nn.linear_a8w8_quant",
    "replacement_kwargs": "compat.nn.linear_a8w8_quant",
    "LinearA8W8QuantDeprecationWarning": "compat._deprecation",
    "install_legacy_imports": "compat._legacy_imports",
    "CheckpointError": "compat.formats.errors",
    "upgrade_state_dict": "compat.checkpoint.upgrade",
    "upgrade_report": "compat.checkpoint.upgrade",
    "UpgradeReport": "compat.checkpoint.upgrade",
    "convert_model": "compat.nn.convert",
    "load_legacy": "compat.checkpoint.legacy",
}

__all__ = sorted(["__version__", *_EXPORTS])


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first access (PEP 562), then cache it."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    """Only the public names (the export table), not this module's imports."""
    return list(__all__)
