"""linear-quant-compat: keep torch_npu's deprecated ``LinearA8W8Quant`` working.

Public names are resolved lazily (PEP 562) so that ``import compat`` does not import
torch: the start-up hook and ``python -m compat doctor`` depend on that.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from compat._version import __version__

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from compat._deprecation import LinearA8W8QuantDeprecationWarning
    from compat._legacy_imports import install_legacy_imports
    from compat.checkpoint.convert import convert_model
    from compat.checkpoint.errors import CheckpointError
    from compat.checkpoint.legacy import load_legacy
    from compat.checkpoint.upgrade import upgrade_report, upgrade_state_dict
    from compat.nn.linear_a8w8_quant import LinearA8W8Quant
    from compat.nn.linear_quant import LinearQuant
    from compat.ops.encoding import decode_quant_param, trans_quant_param
    from compat.ops.quant_matmul import quant_matmul

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "quant_matmul": "compat.ops.quant_matmul",
    "trans_quant_param": "compat.ops.encoding",
    "decode_quant_param": "compat.ops.encoding",
    "LinearQuant": "compat.nn.linear_quant",
    "LinearA8W8Quant": "compat.nn.linear_a8w8_quant",
    "LinearA8W8QuantDeprecationWarning": "compat._deprecation",
    "install_legacy_imports": "compat._legacy_imports",
    "CheckpointError": "compat.checkpoint.errors",
    "upgrade_state_dict": "compat.checkpoint.upgrade",
    "upgrade_report": "compat.checkpoint.upgrade",
    "convert_model": "compat.checkpoint.convert",
    "load_legacy": "compat.checkpoint.legacy",
}

__all__ = [
    "CheckpointError",
    "LinearA8W8Quant",
    "LinearA8W8QuantDeprecationWarning",
    "LinearQuant",
    "__version__",
    "convert_model",
    "decode_quant_param",
    "install_legacy_imports",
    "load_legacy",
    "quant_matmul",
    "trans_quant_param",
    "upgrade_report",
    "upgrade_state_dict",
]


def _lazy_exports(
    package: str, namespace: dict[str, Any], exports: dict[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name of ``exports`` (name -> module)
    is imported from its module on first access, then cached in ``namespace``."""

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__


__getattr__, __dir__ = _lazy_exports(__name__, globals(), _EXPORTS, __all__)
