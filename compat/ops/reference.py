"""Pure-PyTorch reference of ``npu_quant_matmul`` (docs/ops.md §2.3 and §6).

Device-agnostic and meta-friendly; while traced it has no data-dependent control flow,
so that ``torch.compile(fullgraph=True)`` traces it without graph breaks (in eager mode
on CPU one check of the int32 bias range skips the wrap-around terms, see
:func:`wrap_terms`). The epilogue runs in place on blocks of rows of float32 that stay
in cache (one block when traced), issue 13: docs/performance.md. Inputs are assumed
already validated by :func:`compat.ops.quant_matmul.quant_matmul`.

Float arithmetic is float32 like the hardware: the int32 accumulator is converted to
float32 before scaling (so |acc| > 2**24 loses low bits, as on the NPU), the products are
rounded once each in float32, and the final conversion rounds half-to-even.
"""

from __future__ import annotations

import torch

from compat.ops.checks import compiling
from compat.ops.encoding import decode, fold
from compat.ops.intmm import int_matmul
from compat.ops.schemes import A8W8, Scheme

# float32 elements of the accumulator block converted and scaled at a time (256 KiB)
_BLOCK_ELEMENTS = 2**16


def accumulate(
    x1: torch.Tensor, x2: torch.Tensor, *, scheme: Scheme, x2_transposed: bool
) -> torch.Tensor:
    """The exact int32 accumulator ``x1 @ x2`` (packed operands unpacked first)."""
    if scheme.pack > 1:
        x1 = scheme.unpack(x1)
        # a transposed x2 packs along k (its storage is (n, k/pack)); otherwise along n.
        x2 = (
            scheme.unpack(x2.transpose(-2, -1)).transpose(-2, -1)
            if x2_transposed
            else scheme.unpack(x2)
        )
    return int_matmul(x1, x2)


BiasTerms = tuple[torch.Tensor, torch.Tensor | None]


def wrap_terms(bias: torch.Tensor) -> BiasTerms:
    """``(near, flip)`` such that ``(acc + near) ^ flip`` is ``acc + bias`` with int32
    two's complement wrap-around (the vendor golden wraps; the hardware behaviour on
    overflow is UNCONFIRMED, docs/ops.md §2.4), with no int32 overflow on the way.

    |acc| < 2**30 (at most 128 * 128 * 65535 for A8W8, less for A4W4), so each bias
    value is first moved into [-2**30, 2**30) by adding or subtracting 2**31 (a few ops
    on the small bias, in int64), the add then stays inside int32, and the 2**31 taken
    out is put back by flipping the sign bit (``flip``), which is exactly addition of
    2**31 modulo 2**32. Where every bias value is in range already (checked on CPU
    outside tracing), ``near`` is the bias and ``flip`` None.
    """
    if bias.device.type == "cpu" and not compiling():
        lo, hi = torch.aminmax(bias)
        if -(2**30) <= int(lo) and int(hi) < 2**30:
            return bias, None
    wide = bias.to(torch.int64)
    near = ((wide + 2**30) & (2**31 - 1)) - 2**30  # == wide (mod 2**31), in [-2**30, 2**30)
    flip = torch.where(near != wide, -(2**31), 0).to(torch.int32)  # the sign bit, or 0
    return near.to(torch.int32), flip


def add_wrapping_(acc: torch.Tensor, terms: BiasTerms) -> torch.Tensor:
    """``acc += bias`` in place with int32 wrap-around, ``terms`` from :func:`wrap_terms`."""
    near, flip = terms
    acc.add_(near)
    return acc if flip is None else acc.bitwise_xor_(flip)


def folds_float_scale(
    scale_dtype: torch.dtype, output_dtype: torch.dtype | None, *, has_pertoken: bool
) -> bool:
    """Whether a scale is encoded to an int64 quant param before the op runs.

    op-plugin does so for a float32 scale without pertoken and with int8 (also ``None``)
    or float16 output; upstream ``LinearQuant`` (variant L3) applies the same rule in its
    forward. The encoding truncates the scale to 19 bits and folds in the offset.
    """
    return (
        scale_dtype == torch.float32
        and not has_pertoken
        and output_dtype in (None, torch.int8, torch.float16)
    )


def effective_scale(
    scale: torch.Tensor,
    offset: torch.Tensor | None,
    *,
    output_dtype: torch.dtype,
    has_pertoken: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float32 scale and integer offset the hardware applies (docs/ops.md §2.2).

    * int64 scale: decoded; the offset comes from bits 37-45 and a separate ``offset``
      tensor is ignored (the A2/A3 kernel never reads it; UNCONFIRMED, docs/ops.md §2.2).
    * float32 scale, no pertoken, int8/float16 output: op-plugin encodes it first with
      ``npu_trans_quant_param`` (round mode 0), i.e. fp19 truncation and the offset
      rounded half-to-even and saturated to 9 bits; modelled as encode-then-decode.
    * otherwise: the float scale as float32 (bfloat16 widens exactly).
    """
    if scale.dtype == torch.int64:
        s, off = decode(scale)
        return s, off
    if folds_float_scale(scale.dtype, output_dtype, has_pertoken=has_pertoken):
        return fold(scale, offset)
    return scale.to(torch.float32), None


def reference_quant_matmul(
    x1: torch.Tensor,
    x2: torch.Tensor,
    scale: torch.Tensor,
    *,
    offset: torch.Tensor | None,
    pertoken_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    output_dtype: torch.dtype,
    scheme: Scheme = A8W8,
    x2_transposed: bool = False,
) -> torch.Tensor:
    """Compute ``npu_quant_matmul`` exactly as docs/ops.md §6 describes."""
    acc = accumulate(x1, x2, scheme=scheme, x2_transposed=x2_transposed)  # a fresh tensor
    int_bias = None
    float_bias = None
    if bias is not None:
        if bias.dtype == torch.int32:
            int_bias = wrap_terms(bias)  # joins the accumulator before any scaling
        else:
            float_bias = bias.to(torch.float32)  # after scale and pertoken, in float32
    if output_dtype == torch.int32:
        # the scale value is ignored for int32 output
        return acc if int_bias is None else add_wrapping_(acc, int_bias)
    s, off = effective_scale(
        scale, offset, output_dtype=output_dtype, has_pertoken=pertoken_scale is not None
    )
    return epilogue(
        acc, s, off, pertoken_scale, int_bias=int_bias, float_bias=float_bias, out=output_dtype
    )


def _block_rows(rows: int, n: int) -> int:
    """Rows of the accumulator put through the epilogue at a time: a float32 block of
    about ``_BLOCK_ELEMENTS`` stays in cache between the passes (one block when traced:
    inductor fuses the passes itself)."""
    if compiling():
        return rows
    return max(1, min(rows, _BLOCK_ELEMENTS // max(n, 1)))


def epilogue(
    acc: torch.Tensor,
    s: torch.Tensor,
    off: torch.Tensor | None,
    pertoken: torch.Tensor | None,
    *,
    int_bias: BiasTerms | None,
    float_bias: torch.Tensor | None,
    out: torch.dtype,
) -> torch.Tensor:
    """docs/ops.md §2.3-§2.4 on the exact int32 accumulator ``acc`` (a fresh tensor,
    overwritten): int32 bias (wrapping), float32 conversion, scale, pertoken, float bias,
    then the output conversion, with explicit saturation before an integer cast.

    Every pass is one float32 operation rounded once, as the formula has it, run in place
    on blocks of rows that stay in cache. Batches are processed one at a time where a
    pertoken scale or a (batch, 1, n) bias differs per row of a batch; else all rows are
    one sequence.
    """
    n, m = acc.shape[-1], acc.shape[-2]
    per_batch = pertoken is not None or any(
        t is not None and t.dim() == 3
        for t in (None if int_bias is None else int_bias[0], float_bias)
    )
    groups = acc.numel() // (m * n) if per_batch else 1
    acc3 = acc.reshape(groups, -1, n)
    rows = acc3.shape[1]
    block = _block_rows(rows, n)
    p = None if pertoken is None else pertoken.to(torch.float32).unsqueeze(-1)
    if groups == 1 and rows <= block:
        # one block (few rows): no result slices to fill, one conversion at the end
        y = torch.empty((rows, n), dtype=torch.float32, device=acc.device)
        _block(acc3[0], y, s, off, p, int_bias, float_bias, out)
        return y.to(out).reshape(acc.shape)
    result = torch.empty(acc3.shape, dtype=out, device=acc.device)
    buf = torch.empty((block, n), dtype=torch.float32, device=acc.device)
    for g in range(groups):
        ib: BiasTerms | None = None
        if int_bias is not None:
            near, flip = int_bias
            ib = (_row_operand(near, g), None if flip is None else _row_operand(flip, g))
        fb = None if float_bias is None else _row_operand(float_bias, g)
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            y = buf[: stop - start]
            _block(
                acc3[g, start:stop], y, s, off, None if p is None else p[start:stop], ib, fb, out
            )
            result[g, start:stop].copy_(y)  # float16 / bfloat16: round half-to-even
    return result.reshape(acc.shape)


def _block(
    a: torch.Tensor,
    y: torch.Tensor,
    s: torch.Tensor,
    off: torch.Tensor | None,
    p: torch.Tensor | None,
    ib: BiasTerms | None,
    fb: torch.Tensor | None,
    out: torch.dtype,
) -> None:
    """One block of rows: ``a`` (int32, overwritten) through the formula into ``y``
    (float32, same shape), ready for the cast to ``out``."""
    if ib is not None:
        add_wrapping_(a, ib)
    y.copy_(a)  # int32 -> float32, round to nearest even
    y.mul_(s)
    if p is not None:
        y.mul_(p)
    if fb is not None:
        y.add_(fb)
    if out == torch.int8:
        # A float -> integer cast of NaN or of an out-of-range value is undefined in C++
        # (scalar and SIMD paths differ), so every value is made finite and in range
        # first. NaN (a NaN scale, pertoken scale or float bias; CANN forbids NaN scales,
        # docs/ops.md §2.1, the hardware result is UNCONFIRMED) is defined as 0.
        y.round_().nan_to_num_(nan=0.0).clamp_(-256, 255)  # 9-bit stage, §2.4
        if off is not None:
            y.add_(off)
        y.clamp_(-128, 127)


def _row_operand(t: torch.Tensor, g: int) -> torch.Tensor:
    """A bias operand for batch ``g``: a (batch, 1, n) one's row g, else itself."""
    return t[g] if t.dim() == 3 else t
