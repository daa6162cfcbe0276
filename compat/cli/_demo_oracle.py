"""An independent float64 re-derivation of the quant-linear formula for the demo.

It deliberately shares no code with :mod:`compat.ops`: the fp19 truncation is done with
``struct`` on Python floats and the arithmetic in float64/int64. Because the library
computes in float32 like the hardware, the two may differ by rounding: ``tolerance``
bounds that difference (half an output ulp plus float32 error), so a real semantic
mismatch (wrong bias placement, missing truncation, wrong saturation) still fails.
"""

from __future__ import annotations

import struct

import torch


def fp19(value: float) -> float:
    """Truncate a float32 value to its top 19 bits."""
    (bits,) = struct.unpack("<I", struct.pack("<f", value))
    return float(struct.unpack("<f", struct.pack("<I", bits & 0xFFFFE000))[0])


def linear64(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    offset: torch.Tensor | None,
    output_dtype: torch.dtype,
    *,
    truncate_scale: bool,
) -> torch.Tensor:
    """float64 value of the layer before the final rounding.

    int8: the requantized integer (offset and both saturations applied), or the midpoint
    of the two possible integers where float32 rounding may legitimately decide a tie.
    """
    acc = x.to(torch.int64) @ weight.to(torch.int64).T
    if bias is not None and bias.dtype == torch.int32:
        acc = acc + bias.to(torch.int64)
    if output_dtype == torch.int32:
        return acc.to(torch.float64)
    s = [fp19(float(v)) if truncate_scale else float(v) for v in scale.tolist()]
    y = acc.to(torch.float64) * torch.tensor(s, dtype=torch.float64)
    if bias is not None and bias.dtype != torch.int32:
        y = y + bias.to(torch.float64)
    if output_dtype == torch.int8:
        off = None if offset is None else torch.round(offset.to(torch.float64)).clamp(-256, 255)

        def requant(t: torch.Tensor) -> torch.Tensor:
            t = t.clamp(-256, 255)
            return (t if off is None else t + off).clamp(-128, 127)

        exact = requant(torch.round(y))
        # Within float32 error of a .5 tie the library's float32 product may round either
        # way: there the oracle returns the midpoint of both outcomes (diff 0.5 allowed),
        # elsewhere the exact integer (any other integer differs by >= 1).
        frac = y - torch.floor(y)
        near_tie = (frac - 0.5).abs() <= y.abs() * 2.0**-22 + 1e-9
        both = (requant(torch.floor(y)) + requant(torch.floor(y) + 1)) / 2
        return torch.where(near_tie, both, exact)
    return y


def tolerance(y64: torch.Tensor, output_dtype: torch.dtype) -> torch.Tensor:
    """Largest legitimate |library - oracle| per element."""
    f32_err = y64.abs() * 2.0**-23 * 2  # two float32 roundings (acc -> f32, product)
    if output_dtype in (torch.int8, torch.int32):
        return torch.full_like(y64, 0.5 if output_dtype == torch.int8 else 0.0)
    mant_bits = 10 if output_dtype == torch.float16 else 7
    exponent = torch.floor(torch.log2(y64.abs().clamp_min(2.0**-14)))
    half_ulp = torch.pow(2.0, exponent - mant_bits) / 2
    return half_ulp + f32_err + 1e-12
