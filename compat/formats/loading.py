"""``LinearQuant._load_from_state_dict``: dtype-safe loading with automatic upgrade.

PyTorch's default loader copies a checkpoint tensor into the existing parameter, so the
*module's* dtype and shape win (docs/ops.md §3.4): an int64 scale becomes a float of the integer,
a float bias is truncated, a ``(1,)`` scale is a size mismatch. Here the checkpoint's
entries are first judged and upgraded by :mod:`compat.formats.rules` (the same rules
as :func:`compat.upgrade_state_dict`, but knowing the module's output dtype, pertoken
setting and sizes), every problem of the module is raised at once as a
:class:`CheckpointError` before anything is touched, and then each parameter whose dtype
or shape differs is re-shaped so that PyTorch's own loader (hooks, ``strict``,
``assign``, swap-tensors) adopts the checkpoint's dtype and shape instead of casting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from compat.formats.errors import CheckpointError
from compat.formats.rules import NAMES, Context, DictAccess, Spec, apply, plan_group
from compat.ops.schemes import A8W8, scheme_of

# The state_dict format of compat's modules, stored by PyTorch as
# ``state_dict._metadata[module]["version"]``. 1 (nn.Module's default, upstream's
# classes) = parameters in upstream's dtypes; 2 = natural dtypes (int8 weight, ...).
# It is informative only: the format is always detected from the tensors.
FORMAT_VERSION = 2

DefaultLoad = Callable[
    [dict[str, Any], str, dict[str, Any], bool, list[str], list[str], list[str]], None
]


def module_context(module: nn.Module) -> Context:
    """The :class:`Context` of a compat LinearQuant (or anything with its attributes)."""
    weight = getattr(module, "weight", None)
    return Context(
        output_dtype=getattr(module, "output_dtype", None) or torch.int8,
        pertoken=getattr(module, "pertoken_scale", None) is not None,
        out_features=getattr(module, "out_features", None),
        in_features=getattr(module, "in_features", None),
        scheme=(isinstance(weight, torch.Tensor) and scheme_of(weight.dtype)) or A8W8,
    )


def _placeholder(
    like: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...], *, real: bool
) -> torch.Tensor:
    if real:  # assign=False: PyTorch copies into it
        return torch.empty(shape, dtype=dtype, device=like.device)
    # assign=True: PyTorch only compares shapes, then replaces the parameter
    return torch.empty((), dtype=dtype, device=like.device).expand(shape)


def load_linear_quant_state(
    module: nn.Module,
    default_load: DefaultLoad,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: dict[str, Any],
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Body of ``LinearQuant._load_from_state_dict`` (see the module docstring)."""
    keys = {
        name: prefix + name
        for name in NAMES
        if prefix + name in state_dict
        and isinstance(state_dict[prefix + name], torch.Tensor)
        and getattr(module, name, None) is not None
    }
    problems: list[str] = []
    plan = plan_group(prefix, keys, DictAccess(state_dict), module_context(module), problems)
    if problems:
        raise CheckpointError(problems)
    assign = bool(local_metadata.get("assign_to_params_buffers", False))
    # key -> (param, old data, (placeholder's data_ptr, param._version) once it is in)
    reshaped: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]] = {}
    for change in plan.keys:
        if change.changed:
            state_dict[change.key] = apply(change, state_dict[change.key])
        param = getattr(module, change.name)
        target = change.after
        if isinstance(param, torch.Tensor) and (param.dtype, tuple(param.shape)) != (
            target.dtype,
            target.shape,
        ):
            old = param.data
            with torch.no_grad():
                param.data = _placeholder(param, target.dtype, target.shape, real=not assign)
            reshaped[change.key] = (param, old, (param.data_ptr(), param._version))
    targets = {c.key: c.after for c in plan.keys}
    try:
        default_load(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
    except BaseException:
        _restore(module, reshaped, None)
        raise
    _restore(module, reshaped, targets)
    _pertoken_rules(module, prefix, missing_keys)


def _restore(
    module: nn.Module,
    reshaped: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int]]],
    targets: dict[str, Spec] | None,
) -> None:
    """Give a re-shaped parameter its old data back unless PyTorch's loader filled it:
    nothing is lost on failure.

    Decided from each parameter after the load (``targets`` None: the loader raised, so
    everything is restored): it was filled if the module now holds a tensor of the
    checkpoint's dtype and shape whose data is no longer the placeholder's (``assign=True``
    and swap-tensors mode replace it) or was written in place since the placeholder was
    set (``copy_`` bumps the tensor's version counter).
    """
    for key, (param, old, (pointer, version)) in reshaped.items():
        now = getattr(module, key.rpartition(".")[2], None)
        want = targets.get(key) if targets is not None else None
        filled = (
            want is not None
            and isinstance(now, torch.Tensor)
            and (now.dtype, tuple(now.shape)) == (want.dtype, want.shape)
            and (now.data_ptr() != pointer or now._version != version)
        )
        if not filled and now is param:
            with torch.no_grad():
                param.data = old


def _pertoken_rules(module: nn.Module, prefix: str, missing_keys: list[str]) -> None:
    """``pertoken_scale`` is per-call data, not a weight (docs/checkpoints.md).

    Module with pertoken, checkpoint without: not a missing key; the module keeps its
    tensor (assign the ``(m,)`` scale of each batch before calling it). The reverse, a
    checkpoint with pertoken into a module without it, is PyTorch's unexpected key: an
    error under ``strict=True`` (the checkpoint's module ran the pertoken path), ignored
    under ``strict=False``. (PyTorch always passes strict=True to
    ``_load_from_state_dict`` and applies the caller's ``strict`` afterwards.)
    """
    key = prefix + "pertoken_scale"
    if getattr(module, "pertoken_scale", None) is not None and key in missing_keys:
        missing_keys.remove(key)
