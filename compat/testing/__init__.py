"""Run unchanged legacy torch_npu code, and its tests, on a machine without an NPU.

:func:`torch_npu_stand_in` switches on compat's CPU stand-in for ``torch_npu`` (so do
``LINEAR_QUANT_COMPAT_TORCH_NPU=cpu`` and pytest's ``--compat-torch-npu=cpu``): ``import
torch_npu`` then gives the quantized-linear surface legacy code touches, computed by
compat's reference on the CPU. A real torch_npu that imports always wins. See
docs/migration.md ("Where legacy imports resolve").

Importing this package does not import torch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, overload

from compat._stand_in import (
    ON_VALUE,
    SOURCE_CONTEXT,
    VAR,
    StandInStatus,
    release,
    request,
    status,
)

__all__ = ["ON_VALUE", "VAR", "StandInStatus", "stand_in_status", "torch_npu_stand_in"]

_F = TypeVar("_F", bound=Callable[..., Any])


def stand_in_status() -> StandInStatus:
    """Whether the torch_npu stand-in is active in this process, and why (or why not)."""
    return status()


class _StandIn:
    """The context manager (and decorator) that :func:`torch_npu_stand_in` returns."""

    def __enter__(self) -> StandInStatus:
        request(SOURCE_CONTEXT)
        return status()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        release(SOURCE_CONTEXT)

    def __call__(self, func: _F) -> _F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _StandIn():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]


@overload
def torch_npu_stand_in() -> _StandIn: ...
@overload
def torch_npu_stand_in(func: _F) -> _F: ...
def torch_npu_stand_in(func: _F | None = None) -> _StandIn | _F:
    """Switch compat's CPU stand-in for ``torch_npu`` on, for a block or a function.

    ``with torch_npu_stand_in(): ...``, ``@torch_npu_stand_in()`` or
    ``@torch_npu_stand_in``. Inside, ``import torch_npu`` gives the stand-in unless a
    real torch_npu is installed (which is then imported and used if it imports; see
    :func:`stand_in_status`). On leaving the last such block, the stand-in's modules are
    removed from ``sys.modules`` and ``Tensor.npu``/``Module.npu``/``torch.npu`` are
    taken away again (unless the environment variable or pytest option keeps it on).
    Re-entrant and nestable; the ``with`` form gives the :class:`StandInStatus`.
    """
    if func is None:
        return _StandIn()
    return _StandIn()(func)
