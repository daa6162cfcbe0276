"""Import machinery shared by compat's two torch_npu hooks (legacy imports, the stand-in):
the loader they wrap around a real torch_npu's own, and the search for that real one.

Torch-free and cheap: the legacy-import hook and the stand-in's finder import it when
``import torch_npu`` runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any


def find_spec_elsewhere(
    fullname: str,
    path: Sequence[str] | None,
    target: ModuleType | None,
    skip: Callable[[object], bool],
) -> Any:
    """The first spec for ``fullname`` from the finders in ``sys.meta_path`` that ``skip``
    rejects (compat's own finders skip themselves), or None."""
    for finder in tuple(sys.meta_path):
        if skip(finder):
            continue
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            return spec
    return None


class WrappingLoader:
    """Creates and executes modules with another loader; subclasses act around :meth:`run`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def run(self, module: ModuleType) -> None:
        """Execute ``module`` with the wrapped loader, which its code then sees as its own."""
        module.__loader__ = self._loader
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        self._loader.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)
