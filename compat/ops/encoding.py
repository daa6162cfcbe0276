"""``npu_trans_quant_param`` encoding and its inverse (docs/ops.md §1).

Each int64 quant param holds, from the low bits up: 13 zero bits, the top 19 bits of the
float32 scale left in place (bits 13-31), 5 zero bits, a 9-bit two's complement offset
(bits 37-45) and a flag bit 46. Every encoded value therefore lies in [2**46, 2**47).
"""

from __future__ import annotations

import torch

from compat.ops import backend
from compat.ops.checks import (
    eager_values,
    require_dtype,
    require_no_nan,
    require_tensor,
    shape_str,
)

_FP19_MASK = 0xFFFFE000  # sign, exponent and the top 10 mantissa bits of a float32
_FLAG = 1 << 46
_OFFSET_SHIFT = 37
_OFFSET_MIN, _OFFSET_MAX = -256, 255
ROUND_MODES = (0, 1)


# --------------------------------------------------------------------------- kernels
def float32_bits(x: torch.Tensor) -> torch.Tensor:
    """The IEEE bits of a float32 tensor as non-negative int64 values in [0, 2**32)."""
    return x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF


def bits_to_float32(u: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`float32_bits` for int64 values in [0, 2**32)."""
    signed = torch.where(u >= 2**31, u - 2**32, u)
    return signed.to(torch.int32).view(torch.float32)


def fp19(x: torch.Tensor) -> torch.Tensor:
    """Truncate float32 values to their top 19 bits (what round mode 0 keeps)."""
    return (x.view(torch.int32) & -(2**13)).view(torch.float32)


def _round_to_fp19_bits(u: torch.Tensor) -> torch.Tensor:
    """Round mode 1: mantissa rounded half-to-even to 10 bits, denormals flushed."""
    sign = (u >> 31) << 18
    exp = (u >> 23) & 0xFF
    man = u & 0x7FFFFF
    m10 = man >> 13
    round_bit = (man >> 12) & 1
    sticky = man & 0xFFF
    up = (round_bit == 1) & ((sticky != 0) | ((m10 & 1) == 1))
    m10 = m10 + up.to(torch.int64)
    carry = m10 == 1024
    exp_r = exp + carry.to(torch.int64)
    m10 = torch.where(carry, torch.zeros_like(m10), m10)
    overflow = exp_r > 0xFF
    normal = sign | (torch.where(overflow, torch.full_like(exp_r, 0xFF), exp_r) << 10)
    normal = normal | torch.where(overflow, torch.zeros_like(m10), m10)
    special = sign | (exp << 10) | (man >> 13)  # Inf/NaN: truncated, not rounded
    f19 = torch.where(exp == 0, sign, torch.where(exp == 0xFF, special, normal))
    return f19 << 13


def encode(
    scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int = 0
) -> torch.Tensor:
    """Encode float32 ``scale`` (and ``offset``) to int64 quant params, unchecked.

    Shapes must already broadcast; device-agnostic and traceable by torch.compile.
    """
    u = float32_bits(scale)
    s19 = (u & _FP19_MASK) if round_mode == 0 else _round_to_fp19_bits(u)
    q = s19 | _FLAG
    if offset is not None:
        o = saturated_offset(offset).to(torch.int64)
        q = q | ((o & 0x1FF) << _OFFSET_SHIFT)
    return q


def saturated_offset(offset: torch.Tensor) -> torch.Tensor:
    """The offset as the 9-bit field holds it, as float32 values in [-256, 255].

    rint half-to-even, then saturation (clamped in float, so that +-inf saturate instead
    of overflowing an integer conversion). NaN, which the public callers reject where
    they can see values (not while tracing), is mapped to 0 rather than left to an
    undefined float -> integer cast.
    """
    o = torch.round(offset.to(torch.float32)).nan_to_num_(nan=0.0)
    return o.clamp_(_OFFSET_MIN, _OFFSET_MAX)


def fold(
    scale: torch.Tensor, offset: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``decode(encode(scale, offset, 0))`` without building the int64 params: the fp19
    scale and the saturated offset (None without an offset), float32, unchecked."""
    s = fp19(scale)
    return s, (None if offset is None else saturated_offset(offset))


def decode(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode int64 quant params to (float32 scale, float32 integer offset), unchecked.

    Reads only the bits the hardware reads: 13-31 for the scale, 37-45 for the offset.
    """
    scale = bits_to_float32(param & _FP19_MASK)
    o9 = (param >> _OFFSET_SHIFT) & 0x1FF
    offset = torch.where(o9 >= 256, o9 - 512, o9).to(torch.float32)
    return scale, offset


# --------------------------------------------------------------------------- public API
def trans_quant_param(
    scale: torch.Tensor, offset: torch.Tensor | None = None, round_mode: int | None = 0
) -> torch.Tensor:
    """Encode a float32 ``scale`` (and optional ``offset``) as int64 quant params.

    Same contract as ``torch_npu.npu_trans_quant_param``: ``scale`` is 1-D ``(t,)`` or
    2-D ``(1, n)``; ``offset`` has the same rank; a length-1 operand broadcasts.
    ``round_mode=0`` truncates the scale to 19 bits, ``round_mode=1`` rounds it
    half-to-even and flushes zero/denormal scales to signed zero. The offset is rounded
    half-to-even and saturated to [-256, 255]. ``round_mode=None`` means 0, as in
    op-plugin's schema (``int? round_mode=0``). On an NPU tensor the call is delegated to
    torch_npu; elsewhere the reference runs.
    """
    func = "trans_quant_param"
    require_tensor(func, "scale", scale)
    require_dtype(func, "scale", scale, [torch.float32])
    if round_mode is None:
        round_mode = 0
    if (
        isinstance(round_mode, bool)
        or not isinstance(round_mode, int)
        or round_mode not in ROUND_MODES
    ):
        raise ValueError(
            f"{func}: argument 'round_mode' is {round_mode!r}; allowed: 0, 1 (None means 0)"
        )
    if scale.dim() not in (1, 2) or (scale.dim() == 2 and scale.shape[0] != 1):
        raise ValueError(
            f"{func}: argument 'scale' has shape {shape_str(scale)}; allowed: (t,) or (1, n)"
        )
    if scale.numel() == 0:
        raise ValueError(f"{func}: argument 'scale' is empty (shape {shape_str(scale)})")
    if offset is not None:
        require_tensor(func, "offset", offset)
        require_dtype(func, "offset", offset, [torch.float32])
        if offset.device != scale.device:
            raise ValueError(
                f"{func}: argument 'offset' is on {offset.device} but 'scale' is on {scale.device}"
            )
        if scale.dim() == 2:
            if offset.shape != scale.shape:
                raise ValueError(
                    f"{func}: argument 'offset' has shape {shape_str(offset)}; with a 2-D scale "
                    f"it must equal the scale's shape {shape_str(scale)}"
                )
        else:
            if offset.dim() != 1:
                raise ValueError(
                    f"{func}: argument 'offset' has shape {shape_str(offset)}; with a 1-D scale "
                    f"it must be 1-D"
                )
            t, u = scale.shape[0], offset.shape[0]
            if t != u and 1 not in (t, u):
                raise ValueError(
                    f"{func}: argument 'offset' has length {u} and 'scale' length {t}; they must "
                    f"be equal or one of them 1"
                )
        if offset.numel() == 0:
            raise ValueError(f"{func}: argument 'offset' is empty (shape {shape_str(offset)})")
        require_no_nan(func, "offset", offset, "the offset must be a number")
    if backend.is_npu(scale) and backend.npu_status().available:
        return _npu_trans_quant_param(scale, offset, round_mode)
    if offset is not None:
        scale, offset = torch.broadcast_tensors(scale, offset)
    return encode(scale, offset, round_mode)


def _npu_trans_quant_param(
    scale: torch.Tensor, offset: torch.Tensor | None, round_mode: int
) -> torch.Tensor:
    npu = backend.npu_status().module
    assert npu is not None
    if round_mode == 0:
        # round_mode exists only from op-plugin 7.1.0; 0 is the behaviour of older builds.
        result: torch.Tensor = npu.npu_trans_quant_param(scale, offset)
        return result
    try:
        result = npu.npu_trans_quant_param(scale, offset, round_mode=round_mode)
    except TypeError as err:
        raise NotImplementedError(
            f"trans_quant_param: round_mode=1 needs torch_npu with op-plugin 7.1.0 or newer; "
            f"the installed torch_npu {backend.npu_status().version} rejected it ({err})"
        ) from err
    return result


def decode_quant_param(param: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode int64 quant params into ``(scale, offset)``, both float32, same shape.

    The scale is exact (19-bit floats are float32 values); the offset is an integer in
    [-256, 255]. Values that are not encoded params (flag bit 46 unset, or any of bits
    32-36 or 47-63 set) are rejected. Bits 0-12, which the hardware ignores and some
    encoders leave non-zero, are masked off.
    """
    func = "decode_quant_param"
    require_tensor(func, "param", param)
    require_dtype(func, "param", param, [torch.int64])
    if eager_values(param) and param.numel() > 0:  # value checks: eager only
        flag_ok = ((param >> 46) & 1) == 1
        high_ok = (param >> 47) == 0  # arithmetic shift: also catches negative values
        gap_ok = ((param >> 32) & 0x1F) == 0
        bad = ~(flag_ok & high_ok & gap_ok)
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0].tolist())
            value = int(param[index].item()) if index else int(param.item())
            problems = []
            if not bool(flag_ok[index]):
                problems.append("flag bit 46 is not set")
            if not bool(high_ok[index]):
                problems.append("bits 47-63 are not all zero")
            if not bool(gap_ok[index]):
                problems.append("bits 32-36 are not all zero")
            count = int(bad.sum())
            raise ValueError(
                f"{func}: argument 'param' is not an encoded quant param at index "
                f"{list(index)}: value {value} (0x{value & 0xFFFFFFFFFFFFFFFF:016X}): "
                f"{'; '.join(problems)} ({count} bad value(s) of {param.numel()}). Encoded "
                f"params lie in [2**46, 2**47) with bits 32-36 zero, as trans_quant_param "
                f"produces them"
            )
    return decode(param)
