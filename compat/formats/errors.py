"""The one error class of :mod:`compat.checkpoint`."""

from __future__ import annotations

from collections.abc import Iterable


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded, upgraded or converted as asked.

    Raised for anything illegal or unrecoverable, never after a silent cast. ``problems``
    holds one line per problem found (every problem of a state_dict is collected before
    raising, so that one run lists them all); each line names the full key, what was
    found and what is allowed. A subclass of ``RuntimeError`` because
    ``nn.Module.load_state_dict`` reports its own loading errors as ``RuntimeError``.
    """

    problems: tuple[str, ...]

    def __init__(self, problems: str | Iterable[str]) -> None:
        items = (problems,) if isinstance(problems, str) else tuple(problems)
        if not items:
            items = ("unknown checkpoint problem",)
        self.problems = items
        if len(items) == 1:
            message = items[0]
        else:
            lines = "\n".join(f"  - {p}" for p in items)
            message = f"{len(items)} problems:\n{lines}"
        super().__init__(message)
