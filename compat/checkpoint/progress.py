"""A one-line progress bar on stderr (no dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 30
_MIB = 2**20


class Progress:
    """``label [#####-----] 50%  512/1024 MiB``, redrawn in place at most 10 times a second."""

    def __init__(
        self, total: int, *, enabled: bool, stream: TextIO | None = None, delay: float = 0.0
    ) -> None:
        self.total = max(total, 1)
        self._shown_from = time.monotonic() + delay  # nothing is drawn before this
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.label = ""
        self._last = 0.0
        self._drawn = False

    def retotal(self, total: int) -> None:
        """Set the total once it is known (after planning)."""
        self.total = max(total, self.done, 1)

    def finish(self) -> None:
        """Mark the work complete (drawn as 100%)."""
        self.done = self.total
        self._draw(force=True)

    def phase(self, label: str) -> None:
        self.label = label
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self.done = min(self.total, self.done + count)
        self._draw(force=False)

    def _draw(self, *, force: bool) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now < self._shown_from:
            return
        if not force and now - self._last < 0.1 and self.done < self.total:
            return
        self._last = now
        filled = int(_WIDTH * self.done / self.total)
        bar = "#" * filled + "-" * (_WIDTH - filled)
        percent = 100 * self.done // self.total
        unit, size = ("MiB", _MIB) if self.total >= 10 * _MIB else ("KiB", 1024)
        amount = f"{self.done / size:.0f}/{self.total / size:.0f} {unit}"
        self.stream.write(f"\r{self.label:<10} [{bar}] {percent:3d}%  {amount}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
