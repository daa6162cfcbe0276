"""Give back the pages of a memory-mapped source once they have been read.

``torch.load(mmap=True)`` maps the whole file privately; every page the converter reads
(to write it out, or to compare it) stays resident and counts in the process's RSS
until the mapping goes away, so converting a file would otherwise cost its size in RSS.
After each tensor, :class:`PageReleaser` calls ``madvise(MADV_DONTNEED)`` on its pages:
for a private *file* mapping whose pages were never written this only drops them from
the process (a later access reads them again from the page cache). It acts only inside
mappings of the given file found in ``/proc/self/maps`` (Linux), never on anonymous
memory, and only for files in native byte order (torch byte-swaps other files in
place, which makes those pages private copies). Elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import sys
from pathlib import Path

import torch

_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE


def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        func = libc.madvise
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    func.restype = ctypes.c_int
    return func


def _mappings(path: Path) -> list[tuple[int, int]]:
    real = os.path.realpath(path)
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == real:
                    low, high = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((low, high))
    except OSError:
        return []
    return ranges


class PageReleaser:
    """Releases pages of tensors that live in the private mappings of one file."""

    def __init__(self, path: Path, *, enabled: bool = True) -> None:
        self._func = _madvise() if enabled else None
        self._ranges = _mappings(path) if self._func is not None else []

    @property
    def active(self) -> bool:
        return bool(self._ranges)

    def release(self, tensor: torch.Tensor | torch.UntypedStorage) -> None:
        """Drop the pages under ``tensor`` (its own bytes if contiguous, else its storage)."""
        if not self._ranges or self._func is None:
            return
        if isinstance(tensor, torch.Tensor) and tensor.is_contiguous():
            if tensor.device.type != "cpu":
                return
            start, size = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        else:
            storage = tensor.untyped_storage() if isinstance(tensor, torch.Tensor) else tensor
            if storage.device.type != "cpu":
                return
            start, size = storage.data_ptr(), storage.nbytes()
        if size == 0:
            return
        end = start + size
        for low, high in self._ranges:
            a, b = max(start, low), min(end, high)
            if a >= b:
                continue
            a -= a % _PAGE  # whole pages, still inside this file's mapping
            b = min(high, b + (-b % _PAGE))
            self._func(a, b - a, _MADV_DONTNEED)
