"""``compat.LinearQuant``: torch_npu's ``LinearQuant`` (variant L3, docs/ops.md §3) on any device.

Same constructor, attributes, state_dict keys and forward as upstream, with two fixes:
parameters are created with their natural dtypes (weight int8, scale and offset float32,
bias int32) and on ``device`` (upstream ignores ``device`` and creates float32 weights).
Where torch_npu imports and provides ``LinearQuant``, this class subclasses it, so
``isinstance(m, torch_npu.contrib.module.LinearQuant)`` holds.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from compat import upstream
from compat.formats.loading import FORMAT_VERSION, load_linear_quant_state
from compat.nn import _scale_cache
from compat.nn._upstream import upstream_class
from compat.ops.encoding import trans_quant_param
from compat.ops.quant_matmul import check_output_dtype, quant_matmul
from compat.ops.reference import folds_float_scale
from compat.ops.schemes import pairs_text

if TYPE_CHECKING:
    _Base = nn.Module
else:
    _Base = upstream_class(upstream.REPLACEMENT_CLASS) or nn.Module

_INPUT_PAIRS = ((torch.int8, torch.int8), (torch.int32, torch.int32))


def _check_features(cls_name: str, name: str, value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{cls_name}: argument {name!r} must be a positive int, got {value!r}")
    try:
        size = operator.index(value)  # type: ignore[arg-type]  # int, numpy ints, 0-d tensors
    except TypeError:
        raise TypeError(
            f"{cls_name}: argument {name!r} must be a positive int, got "
            f"{type(value).__name__} {value!r}"
        ) from None
    if size <= 0:
        raise ValueError(f"{cls_name}: argument {name!r} must be a positive int, got {size}")
    return size


class LinearQuant(_Base):
    """Quantized linear layer: ``y = quant_matmul(x, weight.T, scale, ...)``.

    Args:
        in_features: size of the last input dim (for A4W4: the packed size k/8).
        out_features: size of the last output dim.
        bias: create an int32 ``bias`` of shape ``(out_features,)``.
        offset: create a float32 ``offset`` of shape ``(out_features,)`` (int8 output).
        pertoken_scale: create a float32 ``pertoken_scale`` of shape ``(out_features,)``,
            as upstream does; the op needs ``(m,)`` per call, so assign a tensor of the
            batch's token count before use.
        device: device of the parameters.
        dtype: accepted for signature compatibility; parameter dtypes are fixed by the
            quantization format and do not follow it.
        output_dtype: ``torch.int8`` (also ``None``), ``torch.float16``, ``torch.bfloat16``
            or ``torch.int32``.

    Parameters are uninitialised (``torch.empty``) like upstream: load a checkpoint or
    assign ``.data`` before use.
    """

    in_features: int
    out_features: int
    output_dtype: torch.dtype | None
    # state_dict format version (PyTorch's _metadata); legacy formats are detected from
    # the tensors themselves, see compat.checkpoint
    _version = FORMAT_VERSION

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool = True,
        offset: bool = False,
        pertoken_scale: bool = False,
        device: torch.device | str | int | None = None,
        dtype: torch.dtype | None = None,
        output_dtype: torch.dtype | None = None,
    ) -> None:
        name = type(self).__name__
        nn.Module.__init__(self)  # upstream's __init__ would create float32 weights
        self.in_features = _check_features(name, "in_features", in_features)
        self.out_features = _check_features(name, "out_features", out_features)
        self.output_dtype = check_output_dtype(name, output_dtype)

        def param(shape: tuple[int, ...], dt: torch.dtype) -> nn.Parameter:
            return nn.Parameter(torch.empty(shape, dtype=dt, device=device), requires_grad=False)

        self.weight = param((self.out_features, self.in_features), torch.int8)
        self.scale = param((self.out_features,), torch.float32)
        if offset:
            self.offset = param((self.out_features,), torch.float32)
        else:
            self.register_parameter("offset", None)
        if pertoken_scale:
            self.pertoken_scale = param((self.out_features,), torch.float32)
        else:
            self.register_parameter("pertoken_scale", None)
        if bias:
            self.bias = param((self.out_features,), torch.int32)
        else:
            self.register_parameter("bias", None)

    def _load_from_state_dict(self, *args: Any) -> None:
        # PyTorch passes (state_dict, prefix, local_metadata, strict, missing_keys,
        # unexpected_keys, error_msgs). Adopts the checkpoint's legal dtypes/shapes,
        # upgrades legacy entries, raises compat.CheckpointError for illegal ones.
        load_linear_quant_state(self, super()._load_from_state_dict, *args)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, offset={self.offset is not None}, "
            f"pertoken_scale={self.pertoken_scale is not None}, output_dtype={self.output_dtype}"
        )

    def _forward_scale(self) -> torch.Tensor:
        """The scale handed to the op: a float32 scale is encoded (with the offset) first.

        Unlike upstream, which re-encodes on every call, the int64 param is encoded once
        and cached until ``scale`` or ``offset`` is replaced or modified in place (see
        :mod:`compat.nn._scale_cache` and :meth:`clear_scale_cache`).
        """
        # Straight from _parameters: Module.__getattr__ costs ~1 us a lookup, and this
        # runs on every forward (bench_linear.py's scale-cache target). A cache hit is
        # checked first, so a cached float32 scale costs no more than an int64 one.
        params = self._parameters
        scale = params["scale"] if "scale" in params else self.scale
        offset = params["offset"] if "offset" in params else self.offset
        pertoken = params["pertoken_scale"] if "pertoken_scale" in params else self.pertoken_scale
        assert scale is not None
        output_dtype = self.output_dtype
        rule = (output_dtype, pertoken is None)
        hit = _scale_cache.lookup(self, scale, offset, rule)
        if hit is not None:
            return hit
        if folds_float_scale(scale.dtype, output_dtype, has_pertoken=pertoken is not None):
            return _scale_cache.encode_and_cache(self, scale, offset, rule, trans_quant_param)
        return scale

    def clear_scale_cache(self) -> None:
        """Forget the cached int64 encoding of ``scale``/``offset``.

        Needed only after writing through the ``.data`` alias in place (e.g.
        ``m.scale.data.mul_(2)``), which PyTorch does not record in the parameter's
        version counter. Replacing the tensors, ``load_state_dict``, ``.to()`` and
        in-place ops on the parameters themselves are detected automatically.
        """
        _scale_cache.clear(self)

    def _apply(self, fn: Any, recurse: bool = True) -> Any:
        # .to(), .cuda(), .half(), ...: the cached param belongs to the old tensors
        _scale_cache.clear(self)
        apply: Callable[..., Any] = super()._apply  # untyped in torch's stubs
        return apply(fn, recurse)

    def _check_input(self, x: torch.Tensor) -> None:
        if (x.dtype, self.weight.dtype) not in _INPUT_PAIRS:
            raise ValueError(
                f"{type(self).__name__}: input has dtype {x.dtype} and weight has dtype "
                f"{self.weight.dtype}; they must be {pairs_text()}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return quant_matmul(
            x,
            self.weight.transpose(-2, -1),
            self._forward_scale(),
            offset=self.offset,
            pertoken_scale=self.pertoken_scale,
            bias=self.bias,
            output_dtype=self.output_dtype,
        )
