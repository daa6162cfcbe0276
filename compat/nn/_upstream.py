"""Find torch_npu's own module classes, where torch_npu imports."""

from __future__ import annotations

import importlib
import sys

from torch import nn

from compat import upstream
from compat.ops import backend


def upstream_class(name: str) -> type[nn.Module] | None:
    """``torch_npu.contrib.module.<name>`` if a real torch_npu imports and provides it
    (never from compat's CPU stand-in, whose classes are compat's own)."""
    module = sys.modules.get(upstream.MODULE)
    if getattr(module, upstream.STAND_IN_ATTRIBUTE, False):
        return None
    if module is None:
        if not backend.npu_status().available:
            return None
        try:
            module = importlib.import_module(upstream.MODULE)
        except Exception:
            return None
    cls = getattr(module, name, None)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return cls
    return None
