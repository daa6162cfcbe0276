"""Independent numpy oracle of docs/ops.md §1 and §6 (npu_trans_quant_param, npu_quant_matmul).

It shares no code with :mod:`compat`: bit manipulation is done on numpy uint32/uint64
views, the accumulator in int64, and the float arithmetic in float32 like the hardware
(``ideal=True`` switches to float64 for comparisons that need the exact value).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def f32_bits(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)


def encode_scalar(scale: float, offset: float | None = None, round_mode: int = 0) -> int:
    """The docs/ops.md §1.4 pseudo-code, one element, Python ints."""
    u = int(np.asarray(scale, dtype=np.float32).view(np.uint32))
    if round_mode == 0:
        s19 = u & 0xFFFFE000
    else:
        sign, e, m = u >> 31, (u >> 23) & 0xFF, u & 0x7FFFFF
        if e == 0:
            f = sign << 18
        elif e == 0xFF:
            f = (sign << 18) | (e << 10) | (m >> 13)
        else:
            m10, rb, st = m >> 13, (m >> 12) & 1, m & 0xFFF
            if rb and (st or (m10 & 1)):
                m10 += 1
                if m10 == 1024:
                    m10, e = 0, e + 1
            f = (sign << 18) | ((0xFF if e > 0xFF else e) << 10) | (0 if e > 0xFF else m10)
        s19 = f << 13
    q = s19 | (1 << 46)
    if offset is not None:
        o = float(np.rint(np.float32(offset)))  # numpy rint: half to even
        o_int = int(min(255.0, max(-256.0, o)))
        q |= (o_int & 0x1FF) << 37
    return q


def encode(scale: np.ndarray, offset: np.ndarray | None = None, round_mode: int = 0) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    if offset is None:
        flat = [encode_scalar(s, None, round_mode) for s in scale.reshape(-1)]
        return np.array(flat, dtype=np.int64).reshape(scale.shape)
    s_b, o_b = np.broadcast_arrays(scale, np.asarray(offset, dtype=np.float32))
    flat = [
        encode_scalar(s, o, round_mode)
        for s, o in zip(s_b.reshape(-1), o_b.reshape(-1), strict=True)
    ]
    return np.array(flat, dtype=np.int64).reshape(s_b.shape)


def decode(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    u = np.asarray(q, dtype=np.int64).view(np.uint64)
    scale = (u & np.uint64(0xFFFFE000)).astype(np.uint32).view(np.float32)
    o9 = ((u >> np.uint64(37)) & np.uint64(0x1FF)).astype(np.int64)
    offset = np.where(o9 >= 256, o9 - 512, o9)
    return scale, offset


def fp19(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float32).view(np.uint32) & np.uint32(0xFFFFE000)).view(
        np.float32
    )


def to_bf16_bits(y: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (finite inputs)."""
    u = np.asarray(y, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)
    return rounded.astype(np.uint16)


def wrap_int32(v: np.ndarray) -> np.ndarray:
    return ((np.asarray(v, dtype=np.int64) + 2**31) % 2**32) - 2**31


def unpack_int4(packed: np.ndarray) -> np.ndarray:
    """int32 with 8 int4 per element, LSB first -> int64 values, last dim x8."""
    p = np.asarray(packed, dtype=np.int64) & 0xFFFFFFFF
    nibbles = np.stack([(p >> (4 * j)) & 0xF for j in range(8)], axis=-1)
    signed = np.where(nibbles >= 8, nibbles - 16, nibbles)
    return signed.reshape(*p.shape[:-1], p.shape[-1] * 8)


def quant_matmul(
    x1: np.ndarray,
    x2: np.ndarray,
    scale: np.ndarray,
    *,
    offset: np.ndarray | None = None,
    pertoken: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    bias_kind: str | None = None,
    out: str = "int8",
    scale_kind: str = "float32",
) -> np.ndarray:
    """Spec §6. ``scale_kind``: 'int64' | 'float32' | 'bfloat16' (bf16 given as float32
    values already exactly representable); ``bias_kind``: 'int32' | 'float' | None.
    Returns int8/int32 arrays, float16 arrays, or uint16 bf16 bit patterns."""
    acc = np.matmul(np.asarray(x1, dtype=np.int64), np.asarray(x2, dtype=np.int64))
    if bias is not None and bias_kind == "int32":
        acc = wrap_int32(acc + np.asarray(bias, dtype=np.int64))
    if out == "int32":
        return wrap_int32(acc).astype(np.int32)
    off = None
    if scale_kind == "int64":
        s, off = decode(scale)
    elif scale_kind == "float32" and pertoken is None and out in ("int8", "float16"):
        s = fp19(scale)
        if offset is not None:
            off = np.clip(np.rint(np.asarray(offset, dtype=np.float32)), -256, 255)
    else:
        s = np.asarray(scale, dtype=np.float32)
    y = acc.astype(np.float32) * np.asarray(s, dtype=np.float32)
    if pertoken is not None:
        y = y * np.asarray(pertoken, dtype=np.float32)[:, None]
    if bias is not None and bias_kind == "float":
        y = y + np.asarray(bias, dtype=np.float32)
    y = y.astype(np.float32)
    if out == "int8":
        t = np.clip(np.rint(y), -256, 255)
        if off is not None:
            t = t + np.asarray(off, dtype=np.float32)
        return np.clip(t, -128, 127).astype(np.int8)
    if out == "float16":
        with np.errstate(over="ignore"):
            return y.astype(np.float16)
    if out == "bfloat16":
        return to_bf16_bits(y)
    raise ValueError(out)
