"""Checkpoints: dtype-safe loading, legacy upgrade, offline conversion, model swap.

* :func:`upgrade_state_dict` / :func:`upgrade_report`: upgrade a (whole-model) state_dict
  holding legacy LinearA8W8Quant/LinearQuant entries (formats F1-F4, docs/checkpoints.md).
* :func:`load_legacy`: read a legacy file (torch, safetensors, sharded, whole-module
  pickle) and return the upgraded state_dict.
* :func:`convert_model`: swap every LinearA8W8Quant of a model for LinearQuant in place.
* ``python -m compat upgrade``: the offline converter (:mod:`compat.checkpoint.converter`).

``compat.LinearQuant.load_state_dict`` applies the same rules automatically. Names are
resolved lazily: :mod:`compat.nn` imports :mod:`compat.checkpoint._hook` and must not pull
in the file converter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from compat import _lazy_exports
from compat._torchload import ensure_torch

ensure_torch()

if TYPE_CHECKING:  # pragma: no cover
    from compat.checkpoint.convert import convert_model
    from compat.checkpoint.errors import CheckpointError
    from compat.checkpoint.legacy import load_legacy
    from compat.checkpoint.upgrade import UpgradeReport, upgrade_report, upgrade_state_dict

_EXPORTS = {
    "CheckpointError": "compat.checkpoint.errors",
    "UpgradeReport": "compat.checkpoint.upgrade",
    "convert_model": "compat.checkpoint.convert",
    "load_legacy": "compat.checkpoint.legacy",
    "upgrade_report": "compat.checkpoint.upgrade",
    "upgrade_state_dict": "compat.checkpoint.upgrade",
}

__all__ = [
    "CheckpointError",
    "UpgradeReport",
    "convert_model",
    "load_legacy",
    "upgrade_report",
    "upgrade_state_dict",
]


__getattr__, __dir__ = _lazy_exports(__name__, globals(), _EXPORTS, __all__)
