"""``torch_npu.npu`` of the stand-in: the two queries graph-mode passes and tests make."""

from __future__ import annotations

import os


def is_available() -> bool:
    return True


def get_device_name(device: object = None) -> str:
    """``TORCH_NPU_STANDIN_DEVICE`` (default ``Ascend910B1``)."""
    return os.environ.get("TORCH_NPU_STANDIN_DEVICE", "Ascend910B1")
