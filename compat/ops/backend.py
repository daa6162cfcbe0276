"""Which backend runs the ops: ``torch_npu`` where it imports, else the reference.

The probe runs once per process and never raises: a missing ``torch_npu``, or one
that is installed but fails to import (typically missing CANN libraries such as
``libhccl.so``), selects the pure-PyTorch reference and keeps the reason for
``python -m compat doctor``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

import torch
from packaging.version import InvalidVersion, Version

from compat._torchload import autoload_failure
from compat.upstream import STAND_IN_ATTRIBUTE

NpuState = Literal["absent", "available", "broken", "stand-in"]

# torch_npu builds for torch 2.0 take ``output_dtype`` as a string, positionally
# (op-plugin config v2r0); every later build takes a keyword ScalarType.
_FIRST_KEYWORD_OUTPUT_DTYPE = Version("2.1.0")


@dataclass(frozen=True)
class NpuStatus:
    """Outcome of probing ``torch_npu`` in this process."""

    state: NpuState
    version: Version | None = None
    reason: str | None = None
    module: ModuleType | None = field(default=None, repr=False, compare=False)

    @property
    def available(self) -> bool:
        return self.state == "available"

    @property
    def string_output_dtype(self) -> bool:
        """True for torch 2.0 builds whose op takes ``output_dtype`` as a string."""
        # compare release numbers: a 2.1.0rc build is already a 2.1 build
        if self.version is None:
            return False
        return self.version.release < _FIRST_KEYWORD_OUTPUT_DTYPE.release


_lock = threading.Lock()
_status: NpuStatus | None = None
_STAND_IN = NpuStatus(
    "stand-in", reason="torch_npu is linear-quant-compat's CPU stand-in (compat.testing)"
)


def npu_status() -> NpuStatus:
    """Probe ``torch_npu`` once (thread-safe) and return the cached result.

    compat's CPU stand-in (:mod:`compat.testing`) is state ``"stand-in"``, not available:
    its tensors stay on the CPU, where the reference runs. That state is never cached (the
    stand-in can be switched off again).
    """
    global _status
    if _status is None:
        with _lock:
            if _status is None:
                status = _probe()
                if status.state == "stand-in":
                    return status
                _status = status
    return _status


def _reset_for_tests() -> None:
    global _status
    with _lock:
        _status = None


def _probe() -> NpuStatus:
    module = sys.modules.get("torch_npu")
    if module is None:
        try:
            spec = importlib.util.find_spec("torch_npu")
        except (ImportError, ValueError) as err:
            return NpuStatus("broken", reason=f"{type(err).__name__}: {err}")
        if spec is None:
            return NpuStatus("absent")
        if getattr(spec.loader, STAND_IN_ATTRIBUTE, False):
            return _STAND_IN
        try:
            module = importlib.import_module("torch_npu")
        except Exception as err:  # ImportError, OSError, RuntimeError from CANN loading
            reason = f"{type(err).__name__}: {err}"
            earlier = autoload_failure()
            if earlier is not None and earlier != reason:
                reason = f"{reason} (autoload: {earlier})"
            return NpuStatus("broken", reason=reason)
    if getattr(module, STAND_IN_ATTRIBUTE, False):
        return _STAND_IN
    raw = getattr(module, "__version__", None)
    if raw is None:
        try:
            from importlib.metadata import version as dist_version

            raw = dist_version("torch_npu")
        except Exception:
            raw = None
    parsed: Version | None = None
    if raw is not None:
        try:
            parsed = Version(str(raw))
        except InvalidVersion:
            return NpuStatus(
                "broken", reason=f"torch_npu reports an unparsable version {raw!r}", module=module
            )
    missing = [
        name for name in ("npu_quant_matmul", "npu_trans_quant_param") if not hasattr(module, name)
    ]
    if missing:
        return NpuStatus(
            "broken",
            version=parsed,
            reason=f"torch_npu {raw} imports but lacks {', '.join(missing)}",
            module=module,
        )
    return NpuStatus("available", version=parsed, module=module)


def is_npu(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` lives on an Ascend NPU."""
    return tensor.device.type == "npu"


def active_backend(device: torch.device | str | None = None) -> str:
    """Name of the backend that runs the ops for tensors on ``device``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "npu" and npu_status().available:
        return "torch_npu"
    return "reference"
