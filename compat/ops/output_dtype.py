"""The one parser of ``output_dtype`` arguments.

Used by the op, both modules, :func:`compat.upgrade_state_dict` and the upgrade CLI; each
passes what differs (which dtypes it accepts, what None means, whether upstream's string
aliases are accepted, and which exception a value of the wrong type raises). The string
aliases are upstream's (:data:`compat.upstream.OUTPUT_DTYPE_ALIASES`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from compat import upstream
from compat.ops.schemes import OUTPUT_DTYPES

__all__ = ["OUTPUT_DTYPES", "allowed_text", "dtype_for_name", "parse_output_dtype"]


def dtype_for_name(text: str, allowed: Sequence[torch.dtype] = OUTPUT_DTYPES) -> torch.dtype | None:
    """The dtype of ``allowed`` that a string spells (upstream's aliases, or the dtype's
    own name such as ``"int32"``), matched case-insensitively; None if none."""
    lowered = text.strip().lower()
    name = upstream.legacy_alias(lowered) or lowered.removeprefix("torch.")
    dtype = getattr(torch, name, None)
    return dtype if isinstance(dtype, torch.dtype) and dtype in allowed else None


def allowed_text(
    allowed: Sequence[torch.dtype], *, none: torch.dtype | None, strings: bool = False
) -> str:
    """``"torch.int8, torch.float16, ..., None (= torch.int8)"``; with ``strings``, each
    dtype with the strings that also spell it."""
    if not strings:
        text = ", ".join(str(d) for d in allowed)
        return text + (f", None (= {none})" if none is not None else "")
    parts = []
    for dtype in allowed:
        name = str(dtype).removeprefix("torch.")
        spellings = [s for s, target in upstream.OUTPUT_DTYPE_ALIASES.items() if target == name]
        spellings = spellings or [name]
        words = ", ".join(repr(s) for s in spellings)
        also = f"also None, {words}" if dtype == none else words
        parts.append(f"{dtype} ({also})")
    return ", ".join(parts)


def parse_output_dtype(
    value: object,
    *,
    func: str,
    param: str = "argument 'output_dtype'",
    allowed: Sequence[torch.dtype] = OUTPUT_DTYPES,
    none: torch.dtype | None = None,
    strings: bool = False,
    wrong_type: type[Exception] = TypeError,
    refuse: Callable[[object, torch.dtype | None], Exception | None] | None = None,
) -> torch.dtype | None:
    """Validate ``value`` as an output dtype and return it (``none`` for None).

    ``func`` and ``param`` name the caller and the argument in messages ("func: param is
    ..., allowed: ..."). ``strings``: accept upstream's string aliases. ``wrong_type``:
    the exception for a value that is neither a dtype, None nor (with ``strings``) a
    string; a dtype or string outside ``allowed`` is a ValueError. ``refuse(value,
    dtype)`` may return a more specific exception for a value (e.g. the legacy class's
    int32), checked before ``allowed``.
    """
    if value is None:
        return none
    if refuse is None and isinstance(value, torch.dtype) and value in allowed:
        return value  # the common case, without building the message text
    text = allowed_text(allowed, none=none, strings=strings)
    dtype: torch.dtype | None
    if strings and isinstance(value, str):
        dtype = dtype_for_name(value, OUTPUT_DTYPES + tuple(allowed))
        _raise(refuse(value, dtype) if refuse is not None else None)
        if dtype is None or dtype not in allowed:
            raise ValueError(f"{func}: {param} is the string {value!r}; allowed: {text}")
        return dtype
    if not isinstance(value, torch.dtype):
        kinds = "a torch.dtype, a string or None" if strings else "a torch.dtype or None"
        raise wrong_type(
            f"{func}: {param} must be {kinds}, got {type(value).__name__} {value!r}; "
            f"allowed: {text}"
        )
    _raise(refuse(value, value) if refuse is not None else None)
    if value not in allowed:
        raise ValueError(f"{func}: {param} is {value}; allowed: {text}")
    return value


def _raise(error: Exception | None) -> None:
    """Raise ``error`` if given, holding no reference to it in a frame: a local would make
    a cycle (exception -> traceback -> frame -> exception) that keeps the caller's
    half-built object alive until the next garbage collection."""
    if error is not None:
        try:
            raise error
        finally:
            del error
