"""Import torch without letting a broken ``torch_npu`` install break it.

torch >= 2.5 imports every ``torch.backends`` entry point at the end of ``import torch``
("device-backend autoload") and turns any failure into ``RuntimeError``. A torch_npu
wheel installed on a machine without the CANN libraries therefore makes *plain*
``import torch`` fail, and a failed ``import torch`` cannot be retried in the same
process. When compat is imported before torch, :func:`ensure_torch` imports torch with
autoload switched off for that one import and then runs the autoload entry points
itself: exactly as torch would, except that a failing ``torch_npu`` entry point is
recorded (see :func:`autoload_failure`) instead of raised. Failures of any other
backend are re-raised unchanged. When torch was imported first, nothing is changed.
"""

from __future__ import annotations

import os
import sys
import threading

_AUTOLOAD_VAR = "TORCH_DEVICE_BACKEND_AUTOLOAD"
_NPU_ENTRY_POINTS = frozenset({"torch_npu"})

_lock = threading.Lock()
_done = False
_autoload_failure: str | None = None


def autoload_failure() -> str | None:
    """Why the ``torch_npu`` autoload entry point failed in this process, if it did."""
    return _autoload_failure


def ensure_torch() -> None:
    """Import torch once, tolerating a broken torch_npu autoload entry point."""
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        if "torch" in sys.modules or os.environ.get(_AUTOLOAD_VAR) is not None:
            import torch  # noqa: F401  (the user's choice of autoload applies)
        else:
            _import_torch_with_tolerant_autoload()
        _done = True


def _import_torch_with_tolerant_autoload() -> None:
    global _autoload_failure
    os.environ[_AUTOLOAD_VAR] = "0"
    try:
        import torch  # autoload switched off for this one import
    finally:
        del os.environ[_AUTOLOAD_VAR]
    import torch

    if not hasattr(torch, "_import_device_backends"):  # torch < 2.5: no autoload
        return
    from importlib.metadata import entry_points

    for entry_point in entry_points(group="torch.backends"):
        try:
            entry_point.load()()
        except Exception as err:
            if entry_point.name not in _NPU_ENTRY_POINTS:
                raise RuntimeError(
                    f"Failed to load the backend extension: {entry_point.name}. You can "
                    f"disable extension auto-loading with {_AUTOLOAD_VAR}=0."
                ) from err
            _autoload_failure = f"{type(err).__name__}: {err}"
