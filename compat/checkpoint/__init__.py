"""Checkpoints: legacy upgrade of whole state_dicts, reading legacy files, offline conversion.

* :func:`upgrade_state_dict` / :func:`upgrade_report`: upgrade a (whole-model) state_dict
  holding legacy LinearA8W8Quant/LinearQuant entries (formats F1-F4, docs/checkpoints.md).
* :func:`load_legacy`: read a legacy file (torch, safetensors, sharded, whole-module
  pickle) and return the upgraded state_dict.
* ``python -m compat upgrade``: the offline converter (:mod:`compat.checkpoint.converter`),
  one module per file format under :mod:`compat.checkpoint.files`.

The per-layer rules live below :mod:`compat.nn`, in :mod:`compat.formats`;
``compat.LinearQuant.load_state_dict`` applies them automatically.
"""

from __future__ import annotations

from compat._torchload import ensure_torch

ensure_torch()

from compat.checkpoint.legacy import load_legacy  # noqa: E402
from compat.checkpoint.upgrade import (  # noqa: E402
    UpgradeReport,
    upgrade_report,
    upgrade_state_dict,
)
from compat.formats.errors import CheckpointError  # noqa: E402
from compat.nn.convert import convert_model  # noqa: E402

__all__ = [
    "CheckpointError",
    "UpgradeReport",
    "convert_model",
    "load_legacy",
    "upgrade_report",
    "upgrade_state_dict",
]
