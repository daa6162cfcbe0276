"""The state_dict format of compat's quantized linears, below :mod:`compat.nn`.

* :mod:`compat.formats.rules`: what a checkpoint entry may hold and how the legacy
  formats F1-F4 (docs/checkpoints.md) are judged and upgraded, key group by key group.
* :mod:`compat.formats.loading`: ``LinearQuant._load_from_state_dict``'s body and the
  module's ``FORMAT_VERSION``.
* :mod:`compat.formats.errors`: :class:`CheckpointError`.

Imports flow one way: ``cli -> checkpoint -> nn -> formats -> ops``.
"""

from __future__ import annotations

from compat._torchload import ensure_torch

ensure_torch()

from compat.formats.errors import CheckpointError  # noqa: E402
from compat.formats.loading import FORMAT_VERSION  # noqa: E402

__all__ = ["FORMAT_VERSION", "CheckpointError"]
