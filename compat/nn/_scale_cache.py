"""The int64 quant param a module encodes from its float32 ``scale`` (and ``offset``),
computed once and reused while those tensors are unchanged.

Upstream ``LinearQuant.forward`` calls ``npu_trans_quant_param`` on every call; the
result depends only on the values of ``scale`` and ``offset``, so compat caches it. An
entry is reused only while, for both tensors:

* the module still holds the *same* tensor object (a new Parameter, or
  ``load_state_dict(assign=True)``, replaces it);
* its data pointer, shape and strides are unchanged (``.data = t``, ``.to()``): the
  entry keeps an alias of the old storage alive, so a later allocation cannot reuse
  that address and look unchanged (``.to()`` also drops the entry, via ``_apply``);
* its version counter is unchanged: every in-place op through the tensor itself bumps
  it (``scale.mul_(2)``, ``scale.copy_(t)``, ``load_state_dict`` without assign, writes
  under ``torch.no_grad()``);
* and the module's encoding rule is the one the entry was made under (its output dtype
  and whether it has a pertoken scale), so a hit also answers whether to encode at all.

Not detectable: in-place writes through the ``.data`` alias (``scale.data.mul_(2)``,
``scale.data[0] = 1``), since ``.data`` is a tensor with its own version counter, by
design of PyTorch. After such a write, call ``module.clear_scale_cache()``.

No cache is used while ``torch.compile`` traces the module (the encoding then becomes
part of the graph), for inference tensors (created under ``torch.inference_mode()``,
they have no version counter) and for tensors without a data pointer.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch

from compat.ops.checks import compiling

ATTRIBUTE = "_compat_scale_cache"

_Key = tuple[int, int, torch.Size, tuple[int, ...]]


class _Entry:
    __slots__ = ("keep", "offset", "offset_key", "rule", "scale", "scale_key", "value")

    def __init__(
        self,
        scale: torch.Tensor,
        offset: torch.Tensor | None,
        rule: Hashable,
        value: torch.Tensor,
    ) -> None:
        self.scale = scale
        self.offset = offset
        self.scale_key = _key(scale)
        self.offset_key = None if offset is None else _key(offset)
        self.rule = rule
        self.value = value
        # detached aliases share the storage, so its address stays taken while cached
        self.keep = (scale.detach(), None if offset is None else offset.detach())


def _key(t: torch.Tensor) -> _Key:
    """What must not change: the version counter (in-place ops) and the view of storage.

    dtype and device need no entry of their own: the old storage is kept alive, so a new
    tensor on another device or of another dtype at the same address would have to be a
    reinterpreting view of that very storage (a dtype-changing view fails the op's own
    dtype checks; a float32 scale viewed as another dtype is no longer encoded at all).
    """
    return (t._version, t.data_ptr(), t.shape, t.stride())


def _unchanged(t: torch.Tensor, key: _Key) -> bool:
    # field by field, cheapest and likeliest to differ first (a forward's hot path)
    return (
        t._version == key[0]
        and t.data_ptr() == key[1]
        and t.shape == key[2]
        and t.stride() == key[3]
    )


def lookup(
    owner: torch.nn.Module,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    rule: Hashable,
) -> torch.Tensor | None:
    """The value cached on ``owner`` for these tensors, or None if there is no valid one.

    ``rule`` is whatever else decided that the scale is encoded (the module's output
    dtype, whether it has a pertoken scale): an entry made under another rule is not
    reused. A hit therefore answers both "encode?" and "to what?" in one check, which
    keeps a cached forward as cheap as one with a pre-encoded int64 scale.
    """
    if compiling():
        return None  # the graph encodes while tracing; the cache is not even read
    entry = owner.__dict__.get(ATTRIBUTE)
    if entry is None:
        return None
    try:
        if (
            type(entry) is _Entry
            and entry.scale is scale
            and entry.offset is offset
            and entry.rule == rule
            and _unchanged(scale, entry.scale_key)
            and (
                offset is None
                or (entry.offset_key is not None and _unchanged(offset, entry.offset_key))
            )
        ):
            return entry.value
    except (RuntimeError, AttributeError, TypeError):
        pass  # inference tensors (no version counter), tensor subclasses without storage
    return None


def encode_and_cache(
    owner: torch.nn.Module,
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    rule: Hashable,
    encode: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
) -> torch.Tensor:
    """``encode(scale, offset)``, cached on ``owner`` under ``rule`` for :func:`lookup`
    (call it after a miss of :func:`lookup`)."""
    value = encode(scale, offset)
    if compiling():  # the graph encodes, nothing cached
        return value
    try:
        owner.__dict__[ATTRIBUTE] = _Entry(scale, offset, rule, value)
    except (RuntimeError, AttributeError, TypeError):
        owner.__dict__.pop(ATTRIBUTE, None)  # not cacheable: encode on every call
    return value


def clear(owner: torch.nn.Module) -> None:
    """Drop ``owner``'s cached quant param, if any."""
    owner.__dict__.pop(ATTRIBUTE, None)
